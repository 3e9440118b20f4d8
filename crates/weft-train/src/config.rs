//! Model and optimisation settings, and the Hugging Face `config.json` they
//! become.

use crate::error::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The shape of a Llama-architecture decoder. The file a user writes holds
/// these keys (HF names); `vocab_size` may be left out and is then taken from
/// the tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    #[serde(default)]
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Longest context the model is trained and served at.
    pub max_position_embeddings: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

fn default_theta() -> f64 {
    10_000.0
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

impl ModelShape {
    pub fn load(path: &Path) -> Result<ModelShape> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let shape: ModelShape = serde_json::from_str(&text).map_err(|e| TrainError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(shape)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::BadShape(m));
        if self.vocab_size == 0 {
            return bad("vocab_size is 0 (and no tokenizer gave one)".into());
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return bad(format!(
                "num_key_value_heads {kv} must divide num_attention_heads {}",
                self.num_attention_heads
            ));
        }
        Ok(())
    }

    /// Trainable parameters.
    pub fn parameters(&self) -> usize {
        let d = self.hidden_size;
        let kv = self.kv_heads() * self.head_dim();
        let layer = d * d * 2 + d * kv * 2 + 3 * d * self.intermediate_size + 2 * d;
        let embed = self.vocab_size * d;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_hidden_layers * layer + d
    }

    /// The Hugging Face `config.json` (loadable by `transformers` as
    /// `LlamaForCausalLM` and by `weft-model`).
    pub fn hf_config(
        &self,
        bos: Option<u32>,
        eos: Option<u32>,
        pad: Option<u32>,
    ) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.kv_heads(),
            "head_dim": self.head_dim(),
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "rope_scaling": null,
            "use_cache": true,
            "torch_dtype": "float32",
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
        })
    }
}

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
        if self.steps == 0 || self.batch_rows == 0 || self.seq_len < 2 {
            return bad("steps and batch_rows must be positive and seq_len at least 2".into());
        }
        if !(self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!(
                "need 0 <= min_lr <= lr and lr > 0 (lr {}, min_lr {})",
                self.lr, self.min_lr
            ));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("betas must be in [0, 1)".into());
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every must be positive".into());
        }
        Ok(())
    }

    /// Learning rate at `step` (0-based): linear warm-up, then cosine to `min_lr`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }
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
