//! The model shape: read from a shape file or a Hugging Face `config.json`,
//! and the `config.json` a trained model gets.
//!
//! `--config` takes either form:
//! - a short shape file with weft's defaults (`{"hidden_size": 128, ...}`:
//!   tied embeddings, `rms_norm_eps` 1e-5, `vocab_size` from the tokenizer);
//! - a Hugging Face Llama `config.json` (one with `model_type` or
//!   `architectures`), read as `transformers` reads it: untied embeddings
//!   and `rms_norm_eps` 1e-6 unless it says otherwise. weft's own output
//!   `config.json` is one, so a trained model's shape can be reused.
//!
//! Keys that do not describe the shape (`architectures`, `torch_dtype`,
//! token ids, `transformers_version`, generation defaults, ...) are ignored.
//! Keys that do, but that weft's trainer cannot honour (another
//! `model_type`, `rope_scaling`, biases, another activation or `head_dim`,
//! dropout, sliding windows, experts, ...), are refused by name rather than
//! silently trained without.

use crate::error::{Result, TrainError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// The shape of a Llama-architecture decoder, under Hugging Face key names.
/// `vocab_size` 0 means "the tokenizer's".
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

/// The standard deviation weft initialises matrices with (what it writes as
/// `initializer_range`).
pub const INITIALIZER_RANGE: f64 = 0.02;

/// Keys of a `config.json` that say nothing about the weights' shape or how
/// they are trained: `transformers`' generic `PretrainedConfig` attributes,
/// token ids, dtype and version stamps. Ignored.
const NOT_SHAPE: &[&str] = &[
    "_attn_implementation_autoset",
    "_commit_hash",
    "_name_or_path",
    "add_cross_attention",
    "architectures",
    "bad_words_ids",
    "begin_suppress_tokens",
    "bos_token_id",
    "chunk_size_feed_forward",
    "cross_attention_hidden_size",
    "decoder_start_token_id",
    "diversity_penalty",
    "do_sample",
    "dtype",
    "early_stopping",
    "encoder_no_repeat_ngram_size",
    "eos_token_id",
    "exponential_decay_length_penalty",
    "finetuning_task",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "id2label",
    "is_decoder",
    "is_encoder_decoder",
    "label2id",
    "length_penalty",
    "max_length",
    "min_length",
    "no_repeat_ngram_size",
    "num_beam_groups",
    "num_beams",
    "num_return_sequences",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "pad_token_id",
    "prefix",
    "pretraining_tp",
    "problem_type",
    "pruned_heads",
    "remove_invalid_values",
    "repetition_penalty",
    "return_dict",
    "return_dict_in_generate",
    "sep_token_id",
    "suppress_tokens",
    "task_specific_params",
    "temperature",
    "tf_legacy_loss",
    "tie_encoder_decoder",
    "tokenizer_class",
    "top_k",
    "top_p",
    "torch_dtype",
    "torchscript",
    "transformers_version",
    "typical_p",
    "use_bfloat16",
    "use_cache",
];

/// Keys of other architectures that change the weights or the computation;
/// a config that sets them (to anything but null/false/0) is refused.
const OTHER_ARCHITECTURE: &[&str] = &[
    "sliding_window",
    "use_sliding_window",
    "layer_types",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "partial_rotary_factor",
    "qk_layernorm",
    "use_qk_norm",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "logit_scale",
    "embedding_multiplier",
    "residual_multiplier",
    "attention_multiplier",
    "logits_scaling",
    "hidden_dropout",
    "residual_dropout",
    "embd_pdrop",
    "resid_pdrop",
];

/// A shape read from a file, and the keys it ignored that weft does not
/// know (neither shape nor `transformers` metadata: worth a warning, since
/// a misspelt key lands here).
#[derive(Debug, Clone)]
pub struct LoadedShape {
    pub shape: ModelShape,
    pub unknown_keys: Vec<String>,
}

impl ModelShape {
    /// Reads `--config`: a shape file or an HF `config.json` (see the module
    /// doc). Unknown keys are logged as a warning and ignored.
    pub fn load(path: &Path) -> Result<ModelShape> {
        let loaded = Self::load_with_unknown(path)?;
        if !loaded.unknown_keys.is_empty() {
            tracing::warn!(
                "{}: ignored keys that are not about a Llama shape: {}",
                path.display(),
                loaded.unknown_keys.join(", ")
            );
        }
        Ok(loaded.shape)
    }

    /// As [`ModelShape::load`], returning the ignored unknown keys.
    pub fn load_with_unknown(path: &Path) -> Result<LoadedShape> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let bad = |reason: String| TrainError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let value: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        Self::from_json(&value).map_err(bad)
    }

    /// The shape a JSON object describes (see the module doc); errors name
    /// the key.
    pub fn from_json(value: &Value) -> std::result::Result<LoadedShape, String> {
        let obj = value
            .as_object()
            .ok_or("the config must be a JSON object")?;
        let hf = obj.contains_key("model_type") || obj.contains_key("architectures");
        if let Some(t) = obj.get("model_type") {
            if t.as_str() != Some("llama") {
                return Err(format!(
                    "model_type {t}: weft trains Llama decoders (model_type \"llama\")"
                ));
            }
        }
        let int = |key: &str| -> std::result::Result<Option<usize>, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|x| Some(x as usize))
                    .ok_or_else(|| format!("{key} must be a whole number, not {v}")),
            }
        };
        let required = |key: &str| -> std::result::Result<usize, String> {
            int(key)?.ok_or_else(|| format!("{key} is required"))
        };
        let float = |key: &str| -> std::result::Result<Option<f64>, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| format!("{key} must be a number, not {v}")),
            }
        };
        let flag = |key: &str| -> std::result::Result<Option<bool>, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| format!("{key} must be true or false, not {v}")),
            }
        };
        let mut shape = ModelShape {
            vocab_size: int("vocab_size")?.unwrap_or(0),
            hidden_size: required("hidden_size")?,
            intermediate_size: required("intermediate_size")?,
            num_hidden_layers: required("num_hidden_layers")?,
            num_attention_heads: required("num_attention_heads")?,
            num_key_value_heads: int("num_key_value_heads")?,
            max_position_embeddings: required("max_position_embeddings")?,
            rope_theta: float("rope_theta")?.unwrap_or_else(default_theta),
            // transformers' LlamaConfig defaults for an HF config; weft's
            // own for a shape file.
            rms_norm_eps: float("rms_norm_eps")?.unwrap_or(if hf { 1e-6 } else { 1e-5 }),
            tie_word_embeddings: flag("tie_word_embeddings")?.unwrap_or(!hf),
        };
        check_rope(obj, &mut shape)?;
        // Settings with one value weft honours.
        if let Some(h) = int("head_dim")? {
            if shape.num_attention_heads > 0 && h * shape.num_attention_heads != shape.hidden_size {
                return Err(format!(
                    "head_dim {h}: weft trains head_dim = hidden_size / num_attention_heads = {}",
                    shape.hidden_size / shape.num_attention_heads
                ));
            }
        }
        if let Some(v) = obj.get("hidden_act") {
            if !(v.is_null() || v.as_str() == Some("silu")) {
                return Err(format!("hidden_act {v}: weft trains SwiGLU (\"silu\")"));
            }
        }
        for key in ["attention_bias", "mlp_bias"] {
            if flag(key)? == Some(true) {
                return Err(format!("{key} true: weft trains without biases"));
            }
        }
        if let Some(p) = float("attention_dropout")? {
            if p != 0.0 {
                return Err(format!(
                    "attention_dropout {p}: weft trains without dropout"
                ));
            }
        }
        if let Some(r) = float("initializer_range")? {
            if r != INITIALIZER_RANGE {
                return Err(format!(
                    "initializer_range {r}: weft initialises with {INITIALIZER_RANGE} (remove the key or set it to {INITIALIZER_RANGE})"
                ));
            }
        }
        for &key in OTHER_ARCHITECTURE {
            match obj.get(key) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(v) if v.as_f64() == Some(0.0) => {}
                Some(v) => {
                    return Err(format!(
                        "{key} {v}: not part of the Llama architecture weft trains"
                    ))
                }
            }
        }
        let known = [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "rope_theta",
            "rope_scaling",
            "rope_parameters",
            "rms_norm_eps",
            "tie_word_embeddings",
            "model_type",
            "head_dim",
            "hidden_act",
            "attention_bias",
            "mlp_bias",
            "attention_dropout",
            "initializer_range",
        ];
        let unknown_keys = obj
            .keys()
            .filter(|k| {
                !known.contains(&k.as_str())
                    && !NOT_SHAPE.contains(&k.as_str())
                    && !OTHER_ARCHITECTURE.contains(&k.as_str())
            })
            .cloned()
            .collect();
        Ok(LoadedShape {
            shape,
            unknown_keys,
        })
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

    /// The keys whose values differ between `self` (a checkpoint's shape)
    /// and `now`, compared as the model sees them (an absent
    /// `num_key_value_heads` is `num_attention_heads`).
    pub fn changes(&self, now: &ModelShape) -> Vec<crate::config::SettingChange> {
        let mut out = Vec::new();
        let mut cmp = |name: &'static str, a: String, b: String| {
            if a != b {
                out.push(crate::config::SettingChange {
                    name,
                    checkpoint: a,
                    now: b,
                });
            }
        };
        cmp(
            "vocab_size",
            self.vocab_size.to_string(),
            now.vocab_size.to_string(),
        );
        cmp(
            "hidden_size",
            self.hidden_size.to_string(),
            now.hidden_size.to_string(),
        );
        cmp(
            "intermediate_size",
            self.intermediate_size.to_string(),
            now.intermediate_size.to_string(),
        );
        cmp(
            "num_hidden_layers",
            self.num_hidden_layers.to_string(),
            now.num_hidden_layers.to_string(),
        );
        cmp(
            "num_attention_heads",
            self.num_attention_heads.to_string(),
            now.num_attention_heads.to_string(),
        );
        cmp(
            "num_key_value_heads",
            self.kv_heads().to_string(),
            now.kv_heads().to_string(),
        );
        cmp(
            "max_position_embeddings",
            self.max_position_embeddings.to_string(),
            now.max_position_embeddings.to_string(),
        );
        cmp(
            "rope_theta",
            self.rope_theta.to_string(),
            now.rope_theta.to_string(),
        );
        cmp(
            "rms_norm_eps",
            self.rms_norm_eps.to_string(),
            now.rms_norm_eps.to_string(),
        );
        cmp(
            "tie_word_embeddings",
            self.tie_word_embeddings.to_string(),
            now.tie_word_embeddings.to_string(),
        );
        out
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
    /// `LlamaForCausalLM` and by `weft-model`; `--config` reads it back to
    /// the same shape).
    pub fn hf_config(&self, bos: Option<u32>, eos: Option<u32>, pad: Option<u32>) -> Value {
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
            "initializer_range": INITIALIZER_RANGE,
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

/// RoPE: plain (`rope_scaling` null, or `rope_parameters` of type
/// `default` with at most `rope_theta`); the base may come from either
/// place, and must agree when it comes from both.
fn check_rope(obj: &Map<String, Value>, shape: &mut ModelShape) -> std::result::Result<(), String> {
    match obj.get("rope_scaling") {
        None | Some(Value::Null) => {}
        Some(v) => {
            return Err(format!(
                "rope_scaling {v}: weft trains plain RoPE (rope_scaling null)"
            ))
        }
    }
    let params = match obj.get("rope_parameters") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(p)) => p,
        Some(v) => return Err(format!("rope_parameters must be an object, not {v}")),
    };
    for key in ["rope_type", "type"] {
        if let Some(v) = params.get(key) {
            if v.as_str() != Some("default") {
                return Err(format!(
                    "rope_parameters.{key} {v}: weft trains plain RoPE (\"default\")"
                ));
            }
        }
    }
    for (key, v) in params {
        match key.as_str() {
            "rope_type" | "type" => {}
            "rope_theta" => {
                let theta = v.as_f64().ok_or_else(|| {
                    format!("rope_parameters.rope_theta must be a number, not {v}")
                })?;
                if obj.get("rope_theta").is_some_and(|t| !t.is_null()) && theta != shape.rope_theta
                {
                    return Err(format!(
                        "rope_parameters.rope_theta {theta} and rope_theta {} disagree",
                        shape.rope_theta
                    ));
                }
                shape.rope_theta = theta;
            }
            _ => {
                return Err(format!(
                "rope_parameters.{key} {v}: weft trains plain RoPE (rope_type and rope_theta only)"
            ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<LoadedShape, String> {
        ModelShape::from_json(&serde_json::from_str(text).unwrap())
    }

    /// A config as transformers 4.x's `LlamaConfig(...).save_pretrained`
    /// writes it.
    const TRANSFORMERS_LLAMA: &str = r#"{
      "architectures": ["LlamaForCausalLM"],
      "attention_bias": false,
      "attention_dropout": 0.0,
      "bos_token_id": 1,
      "eos_token_id": 2,
      "head_dim": 16,
      "hidden_act": "silu",
      "hidden_size": 64,
      "initializer_range": 0.02,
      "intermediate_size": 128,
      "max_position_embeddings": 256,
      "mlp_bias": false,
      "model_type": "llama",
      "num_attention_heads": 4,
      "num_hidden_layers": 2,
      "num_key_value_heads": 2,
      "pretraining_tp": 1,
      "rms_norm_eps": 1e-06,
      "rope_scaling": null,
      "rope_theta": 10000.0,
      "tie_word_embeddings": false,
      "torch_dtype": "float32",
      "transformers_version": "4.46.3",
      "use_cache": true,
      "vocab_size": 104
    }"#;

    #[test]
    fn a_transformers_llama_config_is_read_as_transformers_reads_it() {
        let got = parse(TRANSFORMERS_LLAMA).unwrap();
        assert!(got.unknown_keys.is_empty(), "{:?}", got.unknown_keys);
        let s = got.shape;
        assert_eq!(
            (
                s.vocab_size,
                s.hidden_size,
                s.intermediate_size,
                s.num_hidden_layers
            ),
            (104, 64, 128, 2)
        );
        assert_eq!((s.num_attention_heads, s.kv_heads()), (4, 2));
        assert_eq!(s.rms_norm_eps, 1e-6);
        assert!(!s.tie_word_embeddings);
        // transformers v5 keeps the RoPE base in rope_parameters.
        let mut v5: Value = serde_json::from_str(TRANSFORMERS_LLAMA).unwrap();
        let o = v5.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("rope_scaling");
        o.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 500000.0}),
        );
        o.insert("dtype".into(), "bfloat16".into());
        let s5 = ModelShape::from_json(&v5).unwrap().shape;
        assert_eq!(s5.rope_theta, 500000.0);
        // HF defaults apply only to HF configs: without model_type, weft's.
        let short = parse(
            r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 256}"#,
        )
        .unwrap()
        .shape;
        assert!(short.tie_word_embeddings);
        assert_eq!(short.rms_norm_eps, 1e-5);
        assert_eq!(short.vocab_size, 0);
    }

    #[test]
    fn weft_s_own_config_reads_back_to_the_same_shape() {
        let shape = parse(TRANSFORMERS_LLAMA).unwrap().shape;
        for tied in [true, false] {
            let s = ModelShape {
                tie_word_embeddings: tied,
                ..shape.clone()
            };
            let back = ModelShape::from_json(&s.hf_config(Some(1), Some(2), Some(0))).unwrap();
            assert!(back.unknown_keys.is_empty(), "{:?}", back.unknown_keys);
            assert!(s.changes(&back.shape).is_empty());
        }
    }

    /// Each refusal names the key it cannot honour.
    #[test]
    fn shape_keys_weft_cannot_train_are_refused_by_name() {
        for (key, value, named) in [
            ("model_type", r#""mistral""#, "model_type"),
            (
                "rope_scaling",
                r#"{"rope_type": "linear", "factor": 2.0}"#,
                "rope_scaling",
            ),
            ("attention_bias", "true", "attention_bias"),
            ("mlp_bias", "true", "mlp_bias"),
            ("hidden_act", r#""gelu""#, "hidden_act"),
            ("head_dim", "32", "head_dim"),
            ("attention_dropout", "0.1", "attention_dropout"),
            ("initializer_range", "0.01", "initializer_range"),
            ("sliding_window", "4096", "sliding_window"),
            ("num_local_experts", "8", "num_local_experts"),
            (
                "rope_parameters",
                r#"{"rope_type": "yarn", "factor": 4.0}"#,
                "rope_parameters.rope_type",
            ),
            ("hidden_size", r#""64""#, "hidden_size"),
        ] {
            let mut v: Value = serde_json::from_str(TRANSFORMERS_LLAMA).unwrap();
            v[key] = serde_json::from_str(value).unwrap();
            let err = ModelShape::from_json(&v)
                .err()
                .unwrap_or_else(|| panic!("{key} accepted"));
            assert!(err.starts_with(named), "{key}: {err}");
        }
        let mut v: Value = serde_json::from_str(TRANSFORMERS_LLAMA).unwrap();
        v.as_object_mut().unwrap().remove("num_hidden_layers");
        assert_eq!(
            ModelShape::from_json(&v).err().unwrap(),
            "num_hidden_layers is required"
        );
    }

    /// Keys weft does not know are ignored but reported (a misspelt key
    /// shows up here).
    #[test]
    fn unknown_keys_are_reported() {
        let mut v: Value = serde_json::from_str(TRANSFORMERS_LLAMA).unwrap();
        v["hiden_size"] = 3.into();
        assert_eq!(
            ModelShape::from_json(&v).unwrap().unknown_keys,
            ["hiden_size"]
        );
    }
}
