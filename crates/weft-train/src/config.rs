//! Optimisation settings, the learning-rate schedule (warm-up + cosine, and
//! how it continues when a resumed run changes `--steps`), and what may
//! change when a run resumes.

use crate::error::{Result, TrainError};
pub use crate::shape::ModelShape;
use serde::{Deserialize, Serialize};

/// Optimisation settings. Saved with every checkpoint; a resume must use the
/// same ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps in the whole run (the cosine schedule spans them).
    pub steps: usize,
    /// Packed rows per step.
    pub batch_rows: usize,
    /// Tokens per packed row (documents are packed with a block-diagonal
    /// causal mask and positions that restart at each document).
    pub seq_len: usize,
    pub lr: f64,
    /// The cosine decays to this.
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    pub seed: u64,
    /// Validation every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Packed validation rows used for the validation loss.
    pub eval_rows: usize,
    /// Checkpoint every this many steps.
    pub checkpoint_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch_rows: 8,
            seq_len: 512,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 50,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            seed: 0,
            eval_every: 200,
            eval_rows: 32,
            checkpoint_every: 100,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::BadConfig(m));
        if self.steps == 0 {
            return bad("--steps must be at least 1".into());
        }
        if self.batch_rows == 0 {
            return bad("--batch-rows must be at least 1".into());
        }
        if self.seq_len < 2 {
            return bad(format!(
                "--seq-len must be at least 2, not {}",
                self.seq_len
            ));
        }
        if !(self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!(
                "need 0 <= --min-lr <= --lr and --lr > 0 (--lr {}, --min-lr {})",
                self.lr, self.min_lr
            ));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("betas must be in [0, 1)".into());
        }
        if self.checkpoint_every == 0 {
            return bad("--checkpoint-every must be at least 1".into());
        }
        Ok(())
    }

    /// Learning rate at `step` (0-based): linear warm-up, then cosine to
    /// `min_lr` over the rest of `steps`.
    pub fn lr_at(&self, step: usize) -> f64 {
        self.lr_with(step, None)
    }

    /// Learning rate at `step` on a schedule whose cosine continues from
    /// `anchor` (a resumed run whose `steps` changed; `None`: the plain
    /// warm-up + cosine). The warm-up is the same either way.
    pub fn lr_with(&self, step: usize, anchor: Option<CosineAnchor>) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let t = self.cosine_progress(step, anchor);
        self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// How far along the cosine `step` is, from 0 (peak `lr`) to 1
    /// (`min_lr`). Without an anchor the cosine spans the steps after the
    /// warm-up; with one it goes on from `anchor.progress` at `anchor.step`
    /// and reaches 1 at `steps`.
    pub fn cosine_progress(&self, step: usize, anchor: Option<CosineAnchor>) -> f64 {
        let (from, p0) = anchor.map_or((self.warmup_steps, 0.0), |a| (a.step, a.progress));
        if step <= from {
            return p0;
        }
        let span = self.steps.saturating_sub(from).max(1);
        let x = (step - from) as f64 / span as f64;
        (p0 + (1.0 - p0) * x).min(1.0)
    }

    /// Every setting that differs between `self` (a checkpoint's) and
    /// `now`, named by its `weft train` flag, and whether a resume may
    /// accept it.
    pub fn changes(&self, now: &TrainConfig) -> Vec<SettingChange> {
        let mut out = Vec::new();
        let mut cmp = |name: &'static str, a: String, b: String| {
            if a != b {
                out.push(SettingChange {
                    name,
                    checkpoint: a,
                    now: b,
                });
            }
        };
        cmp("--steps", self.steps.to_string(), now.steps.to_string());
        cmp(
            "--batch-rows",
            self.batch_rows.to_string(),
            now.batch_rows.to_string(),
        );
        cmp(
            "--seq-len",
            self.seq_len.to_string(),
            now.seq_len.to_string(),
        );
        cmp("--lr", self.lr.to_string(), now.lr.to_string());
        cmp("--min-lr", self.min_lr.to_string(), now.min_lr.to_string());
        cmp(
            "--warmup",
            self.warmup_steps.to_string(),
            now.warmup_steps.to_string(),
        );
        cmp(
            "--weight-decay",
            self.weight_decay.to_string(),
            now.weight_decay.to_string(),
        );
        cmp("beta1", self.beta1.to_string(), now.beta1.to_string());
        cmp("beta2", self.beta2.to_string(), now.beta2.to_string());
        cmp("eps", self.eps.to_string(), now.eps.to_string());
        cmp(
            "--clip",
            self.grad_clip.to_string(),
            now.grad_clip.to_string(),
        );
        cmp("--seed", self.seed.to_string(), now.seed.to_string());
        cmp(
            "--eval-every",
            self.eval_every.to_string(),
            now.eval_every.to_string(),
        );
        cmp(
            "--eval-rows",
            self.eval_rows.to_string(),
            now.eval_rows.to_string(),
        );
        cmp(
            "--checkpoint-every",
            self.checkpoint_every.to_string(),
            now.checkpoint_every.to_string(),
        );
        out
    }
}

/// Settings a resumed run may change: they decide when validation and
/// checkpoints happen and on how many validation rows, never what a
/// training step computes (validation reads its own rows, draws no random
/// numbers and leaves the weights, the optimizer and the data stream as
/// they were; a checkpoint restores the run bit for bit).
pub const FREE_ON_RESUME: &[&str] = &["--eval-every", "--eval-rows", "--checkpoint-every"];

/// One setting that differs between a checkpoint and the settings given
/// now, named by its `weft train` flag (or config key; `beta1`, `beta2`
/// and `eps` have no flag).
#[derive(Debug, Clone, PartialEq)]
pub struct SettingChange {
    pub name: &'static str,
    pub checkpoint: String,
    pub now: String,
}

impl std::fmt::Display for SettingChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (checkpoint) vs {} (now)",
            self.name, self.checkpoint, self.now
        )
    }
}

/// Where the cosine stands when a resumed run changes `--steps`: at `step`
/// it is `progress` of the way from `lr` (0) to `min_lr` (1), and from
/// there it goes on to 1 at the new `steps`. The learning rate is
/// continuous at the resume point; a finished run (progress 1) extended
/// trains on at `min_lr`. Saved with checkpoints, so the extended run
/// resumes as exactly as any other.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineAnchor {
    pub step: usize,
    pub progress: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let c = TrainConfig {
            steps: 100,
            warmup_steps: 10,
            lr: 1.0,
            min_lr: 0.1,
            ..TrainConfig::default()
        };
        assert!((c.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(10) - 1.0).abs() < 1e-12);
        assert!(c.lr_at(55) < 0.6 && c.lr_at(55) > 0.5);
        assert!((c.lr_at(100) - 0.1).abs() < 1e-12);
        for s in 10..100 {
            assert!(c.lr_at(s + 1) <= c.lr_at(s) + 1e-12);
        }
    }

    /// The old formula, as it was before anchors: runs that never change
    /// `--steps` must keep their schedule to the bit.
    fn old_lr_at(c: &TrainConfig, step: usize) -> f64 {
        if step < c.warmup_steps {
            return c.lr * (step + 1) as f64 / c.warmup_steps as f64;
        }
        let span = c.steps.saturating_sub(c.warmup_steps).max(1);
        let t = ((step - c.warmup_steps) as f64 / span as f64).min(1.0);
        c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }

    #[test]
    fn an_unchanged_schedule_is_the_same_to_the_bit() {
        for (steps, warmup) in [(100, 10), (7, 0), (40, 40), (1000, 50)] {
            let c = TrainConfig {
                steps,
                warmup_steps: warmup,
                ..TrainConfig::default()
            };
            for s in 0..steps + 3 {
                assert_eq!(c.lr_at(s).to_bits(), old_lr_at(&c, s).to_bits(), "step {s}");
            }
        }
    }

    /// Raising `--steps` at step 55 of 100: the learning rate is the same
    /// at the resume point, keeps falling, and reaches min_lr at the new
    /// end; raising it on a finished run trains on at min_lr.
    #[test]
    fn an_extended_schedule_goes_on_from_where_it_stands() {
        let old = TrainConfig {
            steps: 100,
            warmup_steps: 10,
            lr: 1.0,
            min_lr: 0.1,
            ..TrainConfig::default()
        };
        let new = TrainConfig {
            steps: 155,
            ..old.clone()
        };
        let anchor = CosineAnchor {
            step: 55,
            progress: old.cosine_progress(55, None),
        };
        assert!((anchor.progress - 0.5).abs() < 1e-12);
        assert_eq!(new.lr_with(55, Some(anchor)), old.lr_at(55));
        for s in 55..155 {
            assert!(new.lr_with(s + 1, Some(anchor)) < new.lr_with(s, Some(anchor)));
        }
        assert!((new.lr_with(155, Some(anchor)) - 0.1).abs() < 1e-12);
        // Halfway through the added span the cosine is at 0.75.
        let mid = new.lr_with(105, Some(anchor));
        let want = 0.1 + 0.45 * (1.0 + (0.75 * std::f64::consts::PI).cos());
        assert!((mid - want).abs() < 1e-12, "{mid} vs {want}");
        // A finished run, extended.
        let done = CosineAnchor {
            step: 100,
            progress: old.cosine_progress(100, None),
        };
        assert_eq!(done.progress, 1.0);
        for s in 100..155 {
            assert!((new.lr_with(s, Some(done)) - 0.1).abs() < 1e-12);
        }
        // Shortened instead: still continuous, and at min_lr by the end.
        let short = TrainConfig {
            steps: 80,
            ..old.clone()
        };
        assert_eq!(short.lr_with(55, Some(anchor)), old.lr_at(55));
        assert!((short.lr_with(80, Some(anchor)) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn changes_are_named_by_flag() {
        let a = TrainConfig::default();
        let b = TrainConfig {
            lr: 1e-3,
            eval_every: 5,
            ..a.clone()
        };
        let changes = a.changes(&b);
        let text: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            text,
            [
                "--lr 0.003 (checkpoint) vs 0.001 (now)",
                "--eval-every 200 (checkpoint) vs 5 (now)"
            ]
        );
        assert!(a.changes(&a).is_empty());
    }

    #[test]
    fn shape_checks() {
        let mut s = ModelShape {
            vocab_size: 100,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(3),
            max_position_embeddings: 128,
            rope_theta: 1e4,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
        };
        assert!(s.validate().is_err());
        s.num_key_value_heads = Some(2);
        s.validate().unwrap();
        s.hidden_size = 65;
        assert!(s.validate().is_err());
    }
}
