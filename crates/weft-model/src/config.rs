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

/// RoPE: the angle of pair `i` at position `pos` is
/// `pos * base^(-2i/dim) / freq_factors[i]`, and the rotated values are
/// scaled by `attention_factor` (cos and sin both multiplied, as
/// `transformers` applies YaRN's `attention_scaling`).
#[derive(Debug, Clone)]
pub struct RopeConfig {
    pub base: f32,
    /// Rotated dimensions per head (`head_dim`, or `head_dim *
    /// partial_rotary_factor`).
    pub dim: usize,
    pub style: RopeStyle,
    /// Per-frequency divisors, `dim / 2` of them (linear scaling puts the
    /// factor in every one; llama3 and YaRN scaling compute them per band;
    /// `rope_freqs.weight` in GGUF).
    pub freq_factors: Option<Vec<f32>>,
    /// Multiplier on cos and sin (1 except for YaRN).
    pub attention_factor: f32,
}

impl RopeConfig {
    /// Inverse frequencies for each rotated pair (`dim / 2` values, radians
    /// per position).
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
        if self.rope.dim == 0 || self.rope.dim > self.head_dim || !self.rope.dim.is_multiple_of(2) {
            return bad(format!(
                "RoPE dimension {} does not fit head size {} (it must be even and 2..={})",
                self.rope.dim, self.head_dim, self.head_dim
            ));
        }
        if !(self.rope.base.is_finite() && self.rope.base > 1.0) {
            return bad(format!(
                "RoPE base (freq_base / rope_theta) {} must be a number above 1",
                self.rope.base
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return bad(format!(
                "RMSNorm epsilon {} must be a number of at least 0",
                self.norm_eps
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
        // Checked before any table is sized from it (a hostile file may say
        // 2^64 - 1); `validate` checks it against the head size.
        if rope_dim > head_dim || head_dim > 1 << 16 {
            return Err(ModelError::file(
                &g.path,
                format!(
                    "RoPE dimension `{}` = {rope_dim} does not fit the head size {head_dim} (at most {})",
                    key("rope.dimension_count"),
                    1 << 16
                ),
            ));
        }
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
                attention_factor: 1.0,
            },
        };
        cfg.validate(&g.path)?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json` (`path` names it in errors).
    /// RoPE comes from transformers v5's `rope_parameters` or v4's
    /// `rope_theta` + `rope_scaling` (see [`HfConfig::rope`]).
    /// The configuration of a `.gguf` file (its header only) or a Hugging
    /// Face folder (its `config.json`), without loading any weight: what a
    /// client of a remote server needs (context length, vocabulary).
    ///
    /// Errors: as [`crate::Model::load`] for the header or `config.json`.
    pub fn load(path: &Path) -> Result<ModelConfig> {
        if path.is_dir() {
            let cfg_path = path.join("config.json");
            let text =
                std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
            let hf: HfConfig = serde_json::from_str(&text)
                .map_err(|e| ModelError::file(&cfg_path, format!("invalid config: {e}")))?;
            ModelConfig::from_hf(&cfg_path, &hf)
        } else {
            ModelConfig::from_gguf(&GgufFile::open(path)?)
        }
    }

    pub fn from_hf(path: &Path, hf: &HfConfig) -> Result<ModelConfig> {
        let arch = Arch::parse(&hf.model_type).ok_or_else(|| ModelError::UnknownArchitecture {
            path: path.to_path_buf(),
            arch: hf.model_type.clone(),
        })?;
        let head_dim = match hf.head_dim {
            Some(h) => h,
            None => hf
                .hidden_size
                .checked_div(hf.num_attention_heads)
                .ok_or_else(|| ModelError::file(path, "num_attention_heads is 0"))?,
        };
        let mut max_context = hf.max_position_embeddings.unwrap_or(4096);
        // Biases a Llama-family config asks for that weft's Llama does not
        // load: refused by name, never silently dropped.
        if matches!(arch, Arch::Llama | Arch::Qwen3) {
            for (key, on) in [
                ("attention_bias", hf.attention_bias),
                ("mlp_bias", hf.mlp_bias),
            ] {
                if on {
                    return Err(ModelError::file(
                        path,
                        format!(
                            "`{key}: true` is not supported for model_type `{}`",
                            hf.model_type
                        ),
                    ));
                }
            }
        }
        // Sliding-window attention (Mistral's `sliding_window`, Qwen2/3 with
        // `use_sliding_window`): up to the window it is full attention, so
        // the context is capped at the window and the model is exact there.
        let window = match hf.model_type.as_str() {
            "mistral" => hf.sliding_window,
            "qwen2" | "qwen3" if hf.use_sliding_window => hf.sliding_window,
            _ => None,
        };
        if let Some(w) = window.filter(|&w| w < max_context) {
            if w == 0 {
                return Err(ModelError::file(path, "`sliding_window` is 0"));
            }
            tracing::warn!(
                "{}: sliding_window {w} < max_position_embeddings {max_context}: the context is capped at {w} tokens (sliding-window attention is not implemented; below the window it is exact)",
                path.display()
            );
            max_context = w;
        }
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
            max_context,
            rope: hf.rope(path, head_dim)?,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }
}

fn default_eps() -> f32 {
    1e-6
}

/// The fields of a Hugging Face `config.json` that weft reads. Unknown
/// fields are ignored, as `transformers` keeps them as attributes.
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
    /// transformers v4: the RoPE base at the top level.
    pub rope_theta: Option<f64>,
    pub max_position_embeddings: Option<usize>,
    /// Phi-3 style: the pretraining length outside the RoPE parameters
    /// (takes priority, as in `standardize_rope_params`).
    pub original_max_position_embeddings: Option<usize>,
    pub partial_rotary_factor: Option<f64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral / Qwen2 sliding-window attention (see [`ModelConfig::from_hf`]).
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: bool,
    /// transformers v4: RoPE scaling (`{"rope_type" | "type": ..., "factor": ...}`).
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers v5: every RoPE setting (`{"rope_type": ..., "rope_theta": ..., ...}`).
    pub rope_parameters: Option<serde_json::Value>,
}

/// RoPE types weft implements, as `transformers`' `ROPE_INIT_FUNCTIONS`
/// names them.
pub const ROPE_TYPES: &[&str] = &["default", "linear", "llama3", "yarn", "dynamic"];

impl HfConfig {
    /// The RoPE settings, resolved as `transformers`'
    /// `standardize_rope_params` and `ROPE_INIT_FUNCTIONS`
    /// (`modeling_rope_utils.py`, v5.24) resolve them:
    /// - parameters from `rope_parameters` (v5), else `rope_scaling` (v4);
    ///   the type from `rope_type`, else `type`, else `default`; the base
    ///   from the parameters' `rope_theta`, else the top-level one, else
    ///   10000; `partial_rotary_factor` likewise;
    /// - `linear`: every frequency divided by `factor`;
    /// - `llama3`: the band formula with `factor`, `low_freq_factor`,
    ///   `high_freq_factor`, `original_max_position_embeddings`;
    /// - `yarn`: the NTK-by-parts blend with `beta_fast` (32) and
    ///   `beta_slow` (1), `truncate`, and the attention factor from
    ///   `attention_factor`, else `mscale`/`mscale_all_dim`, else
    ///   `0.1 ln(factor) + 1`;
    /// - `dynamic`: dynamic NTK changes nothing up to
    ///   `max_position_embeddings`, and weft never runs past it (the
    ///   model's context), so it is the default frequencies.
    ///
    /// Errors, naming the field: another type (`longrope`, ...), a
    /// missing required parameter, per-layer-type parameters that differ.
    pub fn rope(&self, path: &Path, head_dim: usize) -> Result<RopeConfig> {
        let bad = |reason: String| ModelError::file(path, reason);
        let (field, mut params) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) if !p.is_null() => ("rope_parameters", p.clone()),
            (_, Some(s)) if !s.is_null() => ("rope_scaling", s.clone()),
            _ => ("rope_parameters", serde_json::json!({})),
        };
        if !params.is_object() {
            return Err(bad(format!("`{field}` must be an object")));
        }
        // Parameters nested by layer type ({"full_attention": {...}, ...}).
        let nested: Vec<&serde_json::Value> = params
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|v| v.is_object())
            .collect();
        if !nested.is_empty() {
            if nested.windows(2).any(|w| w[0] != w[1]) {
                return Err(bad(format!(
                    "`{field}` has different RoPE parameters per layer type, which weft does not support"
                )));
            }
            params = nested[0].clone();
        }
        let num = |key: &str| -> Result<Option<f64>> {
            match params.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("`{field}.{key}` must be a number, not {v}"))),
            }
        };
        let require = |key: &str, ty: &str| -> Result<f64> {
            num(key)?
                .ok_or_else(|| bad(format!("`{field}.{key}` is required for RoPE type `{ty}`")))
        };
        let ty = match params.get("rope_type").or_else(|| params.get("type")) {
            None | Some(serde_json::Value::Null) => "default".to_string(),
            Some(serde_json::Value::String(t)) => t.clone(),
            Some(v) => {
                return Err(bad(format!(
                    "`{field}.rope_type` must be a string, not {v}"
                )))
            }
        };
        let base = num("rope_theta")?.or(self.rope_theta).unwrap_or(10_000.0);
        if !(base.is_finite() && base > 1.0) {
            return Err(bad(format!(
                "RoPE base (rope_theta) {base} must be a number above 1"
            )));
        }
        let partial = num("partial_rotary_factor")?
            .or(self.partial_rotary_factor)
            .unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(bad(format!(
                "partial_rotary_factor {partial} must be in (0, 1]"
            )));
        }
        // A head is at most a few thousand values in any real model; a
        // larger `head_dim` is a broken file, not a table to allocate.
        if head_dim == 0 || head_dim > 1 << 16 {
            return Err(bad(format!(
                "head_dim {head_dim} is not a head size (1..={})",
                1 << 16
            )));
        }
        let dim = (head_dim as f64 * partial) as usize;
        let max_pos = self.max_position_embeddings.unwrap_or(4096) as f64;
        let original_max = || -> Result<f64> {
            Ok(match self.original_max_position_embeddings {
                Some(o) => o as f64,
                None => num("original_max_position_embeddings")?.unwrap_or(max_pos),
            })
        };
        // Inverse frequencies without scaling, as `RopeConfig::inv_freqs`
        // computes them (`base^(-2i/d)` in f32: within an ulp of
        // transformers' `1 / base^(2i/d)`, and what llama.cpp's greedy
        // decoding parity is measured with).
        let plain: Vec<f32> = (0..dim / 2)
            .map(|i| (base as f32).powf(-2.0 * i as f32 / dim as f32))
            .collect();
        let mut attention_factor = 1.0f32;
        let freq_factors: Option<Vec<f32>> = match ty.as_str() {
            "default" | "dynamic" => None,
            "linear" => {
                let factor = require("factor", &ty)? as f32;
                Some(vec![factor; dim / 2])
            }
            "llama3" => {
                let factor = require("factor", &ty)? as f32;
                let low = require("low_freq_factor", &ty)? as f32;
                let high = require("high_freq_factor", &ty)? as f32;
                let old_ctx = original_max()? as f32;
                let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
                Some(
                    plain
                        .iter()
                        .map(|&inv| {
                            let wavelen = 2.0 * std::f32::consts::PI / inv;
                            if wavelen < high_wavelen {
                                1.0
                            } else if wavelen > low_wavelen {
                                factor
                            } else {
                                let smooth = (old_ctx / wavelen - low) / (high - low);
                                1.0 / ((1.0 - smooth) / factor + smooth)
                            }
                        })
                        .collect(),
                )
            }
            "yarn" => {
                let original = original_max()?;
                let factor = num("factor")?.unwrap_or(max_pos / original);
                let mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                attention_factor = match num("attention_factor")? {
                    Some(a) => a,
                    None => match (num("mscale")?, num("mscale_all_dim")?) {
                        (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                            mscale(factor, m) / mscale(factor, all)
                        }
                        _ => mscale(factor, 1.0),
                    },
                } as f32;
                let beta_fast = num("beta_fast")?.filter(|b| *b != 0.0).unwrap_or(32.0);
                let beta_slow = num("beta_slow")?.filter(|b| *b != 0.0).unwrap_or(1.0);
                let truncate = params
                    .get("truncate")
                    .and_then(|t| t.as_bool())
                    .unwrap_or(true);
                let correction_dim = |rotations: f64| {
                    dim as f64 * (original / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0) as f32, high.min(dim as f64 - 1.0) as f32);
                if low == high {
                    high += 0.001;
                }
                let factor = factor as f32;
                Some(
                    plain
                        .iter()
                        .enumerate()
                        .map(|(i, &inv)| {
                            let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                            let extrapolation = 1.0 - ramp;
                            let blended =
                                (inv / factor) * (1.0 - extrapolation) + inv * extrapolation;
                            inv / blended
                        })
                        .collect(),
                )
            }
            other => {
                return Err(bad(format!(
                    "unsupported RoPE type `{other}` in `{field}` (supported: {})",
                    ROPE_TYPES.join(", ")
                )))
            }
        };
        if let Some(ff) = &freq_factors {
            if ff.iter().any(|f| !f.is_finite() || *f <= 0.0) {
                return Err(bad(format!(
                    "RoPE type `{ty}` gives invalid frequency scales from `{field}`"
                )));
            }
        }
        if !attention_factor.is_finite() {
            return Err(bad(format!(
                "`{field}` gives a non-finite attention factor"
            )));
        }
        Ok(RopeConfig {
            base: base as f32,
            dim,
            style: RopeStyle::Halves,
            freq_factors,
            attention_factor,
        })
    }
}
