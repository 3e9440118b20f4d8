//! Model hyper-parameters, read from GGUF metadata or a Hugging Face
//! `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// The supported decoder families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama-2 / SmolLM2: no biases, optional tied output.
    Llama,
    /// Qwen2 / Qwen2.5: biases on q, k, v.
    Qwen2,
    /// Qwen3: RMSNorm on each q and k head.
    Qwen3,
}

impl Arch {
    pub fn parse(name: &str) -> Option<Arch> {
        match name {
            "llama" | "mistral" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }
}

/// Which dimensions RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF llama files (the converter permutes q/k).
    Interleaved,
    /// Halves `(i, i + d/2)`: Hugging Face checkpoints, and GGUF qwen2/qwen3.
    Halves,
}

/// RoPE frequencies: `theta_i = pos * base^(-2i/dim) / scale_i`.
#[derive(Debug, Clone)]
pub struct RopeConfig {
    pub base: f32,
    pub dim: usize,
    pub style: RopeStyle,
    /// Per-frequency divisors (linear scaling puts the factor in every one;
    /// llama3 scaling puts a band of them; `rope_freqs.weight` in GGUF).
    pub freq_factors: Option<Vec<f32>>,
}

impl RopeConfig {
    /// Inverse frequencies for each rotated pair.
    pub fn inv_freqs(&self) -> Vec<f32> {
        (0..self.dim / 2)
            .map(|i| {
                let f = self.base.powf(-2.0 * i as f32 / self.dim as f32);
                f / self
                    .freq_factors
                    .as_ref()
                    .map_or(1.0, |ff| ff.get(i).copied().unwrap_or(1.0))
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub norm_eps: f32,
    pub max_context: usize,
    pub rope: RopeConfig,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub(crate) fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Err(ModelError::file(path, reason));
        if self.n_heads == 0 || self.n_kv_heads == 0 || self.n_layers == 0 || self.d_model == 0 {
            return bad("config has a zero dimension (heads, layers or width)".into());
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} KV heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.rope.dim > self.head_dim || !self.rope.dim.is_multiple_of(2) {
            return bad(format!(
                "RoPE dimension {} does not fit head size {}",
                self.rope.dim, self.head_dim
            ));
        }
        Ok(())
    }

    /// Reads the `{arch}.*` keys of a GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<ModelConfig> {
        let arch_name = g
            .get_str("general.architecture")
            .ok_or_else(|| {
                ModelError::file(&g.path, "missing metadata key `general.architecture`")
            })?
            .to_string();
        let arch = Arch::parse(&arch_name).ok_or_else(|| ModelError::UnknownArchitecture {
            path: g.path.clone(),
            arch: arch_name.clone(),
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let d_model = g.require_usize(&key("embedding_length"))?;
        let n_heads = g.require_usize(&key("attention.head_count"))?;
        let n_kv_heads = g
            .get_usize(&key("attention.head_count_kv"))
            .unwrap_or(n_heads);
        let head_dim = g
            .get_usize(&key("attention.key_length"))
            .unwrap_or(d_model / n_heads.max(1));
        let vocab_size = match g.get_usize(&key("vocab_size")) {
            Some(v) => v,
            None => g.tensor("token_embd.weight")?.dims[0],
        };
        let rope_dim = g
            .get_usize(&key("rope.dimension_count"))
            .unwrap_or(head_dim);
        let mut freq_factors = None;
        match g.get_str(&key("rope.scaling.type")) {
            None | Some("none") => {}
            Some("linear") => {
                let f = g.get_f32(&key("rope.scaling.factor")).unwrap_or(1.0);
                freq_factors = Some(vec![f; rope_dim / 2]);
            }
            Some(other) => {
                return Err(ModelError::file(&g.path, format!("unsupported RoPE scaling `{other}` (supported: none, linear, llama3 frequency factors)")));
            }
        }
        if g.has_tensor("rope_freqs.weight") {
            let t = g.tensor("rope_freqs.weight")?;
            freq_factors = Some(crate::weights::to_f32(t.dtype, t.bytes.as_slice()));
        }
        let cfg = ModelConfig {
            arch,
            n_layers: g.require_usize(&key("block_count"))?,
            d_model,
            d_ff: g.require_usize(&key("feed_forward_length"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            norm_eps: g
                .get_f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            max_context: g.get_usize(&key("context_length")).unwrap_or(4096),
            rope: RopeConfig {
                base: g.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
                dim: rope_dim,
                style: if arch == Arch::Llama {
                    RopeStyle::Interleaved
                } else {
                    RopeStyle::Halves
                },
                freq_factors,
            },
        };
        cfg.validate(&g.path)?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf(path: &Path, hf: &HfConfig) -> Result<ModelConfig> {
        let arch = Arch::parse(&hf.model_type).ok_or_else(|| ModelError::UnknownArchitecture {
            path: path.to_path_buf(),
            arch: hf.model_type.clone(),
        })?;
        let head_dim = hf
            .head_dim
            .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1));
        let freq_factors = match &hf.rope_scaling {
            None => None,
            Some(s) => Some(s.freq_factors(path, head_dim, hf.rope_theta)?),
        };
        let cfg = ModelConfig {
            arch,
            n_layers: hf.num_hidden_layers,
            d_model: hf.hidden_size,
            d_ff: hf.intermediate_size,
            n_heads: hf.num_attention_heads,
            n_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim,
            vocab_size: hf.vocab_size,
            norm_eps: hf.rms_norm_eps,
            max_context: hf.max_position_embeddings.unwrap_or(4096),
            rope: RopeConfig {
                base: hf.rope_theta,
                dim: head_dim,
                style: RopeStyle::Halves,
                freq_factors,
            },
        };
        cfg.validate(path)?;
        Ok(cfg)
    }
}

fn default_theta() -> f32 {
    10_000.0
}

fn default_eps() -> f32 {
    1e-6
}

/// The fields of a Hugging Face `config.json` that weft reads.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    pub rope_scaling: Option<HfRopeScaling>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HfRopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    pub factor: Option<f32>,
    pub low_freq_factor: Option<f32>,
    pub high_freq_factor: Option<f32>,
    pub original_max_position_embeddings: Option<usize>,
}

impl HfRopeScaling {
    /// Per-frequency divisors, as `transformers` computes them.
    fn freq_factors(&self, path: &Path, dim: usize, base: f32) -> Result<Vec<f32>> {
        let factor = self.factor.unwrap_or(1.0);
        match self.rope_type.as_str() {
            "default" => Ok(vec![1.0; dim / 2]),
            "linear" => Ok(vec![factor; dim / 2]),
            "llama3" => {
                let low = self.low_freq_factor.unwrap_or(1.0);
                let high = self.high_freq_factor.unwrap_or(4.0);
                let old_ctx = self.original_max_position_embeddings.unwrap_or(8192) as f32;
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                Ok((0..dim / 2)
                    .map(|i| {
                        let freq = base.powf(-2.0 * i as f32 / dim as f32);
                        let wavelen = 2.0 * std::f32::consts::PI / freq;
                        if wavelen < high_wavelen {
                            1.0
                        } else if wavelen > low_wavelen {
                            factor
                        } else {
                            let smooth = (old_ctx / wavelen - low) / (high - low);
                            1.0 / ((1.0 - smooth) / factor + smooth)
                        }
                    })
                    .collect())
            }
            other => Err(ModelError::file(
                path,
                format!(
                    "unsupported rope_scaling type `{other}` (supported: default, linear, llama3)"
                ),
            )),
        }
    }
}
