//! Writes tiny random-weight models, as a Hugging Face folder (safetensors)
//! and as an F32 GGUF file laid out the way llama.cpp's converter lays it out.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

pub struct Tiny {
    pub arch: &'static str,
    pub vocab: usize,
    pub d: usize,
    pub ff: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub layers: usize,
    pub tied: bool,
}

impl Tiny {
    pub fn llama() -> Tiny {
        Tiny {
            arch: "llama",
            vocab: 96,
            d: 64,
            ff: 96,
            heads: 4,
            kv_heads: 2,
            layers: 2,
            tied: false,
        }
    }

    fn head_dim(&self) -> usize {
        self.d / self.heads
    }

    /// HF tensor name -> (shape, values).
    pub fn weights(&self, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut t = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
            let n: usize = shape.iter().product();
            let v = (0..n)
                .map(|_| offset + scale * rng.gen_range(-1.0f32..1.0))
                .collect();
            (name, shape, v)
        };
        let (d, hd, q, kv, ff) = (
            self.d,
            self.head_dim(),
            self.d,
            self.kv_heads * self.head_dim(),
            self.ff,
        );
        let mut out = vec![t(
            "model.embed_tokens.weight".into(),
            vec![self.vocab, d],
            1.0,
            0.0,
        )];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}.");
            out.push(t(format!("{p}input_layernorm.weight"), vec![d], 0.2, 1.0));
            out.push(t(
                format!("{p}self_attn.q_proj.weight"),
                vec![q, d],
                0.3,
                0.0,
            ));
            out.push(t(
                format!("{p}self_attn.k_proj.weight"),
                vec![kv, d],
                0.3,
                0.0,
            ));
            out.push(t(
                format!("{p}self_attn.v_proj.weight"),
                vec![kv, d],
                0.3,
                0.0,
            ));
            if self.arch == "qwen2" {
                out.push(t(format!("{p}self_attn.q_proj.bias"), vec![q], 0.5, 0.0));
                out.push(t(format!("{p}self_attn.k_proj.bias"), vec![kv], 0.5, 0.0));
                out.push(t(format!("{p}self_attn.v_proj.bias"), vec![kv], 0.5, 0.0));
            }
            if self.arch == "qwen3" {
                out.push(t(format!("{p}self_attn.q_norm.weight"), vec![hd], 0.2, 1.0));
                out.push(t(format!("{p}self_attn.k_norm.weight"), vec![hd], 0.2, 1.0));
            }
            out.push(t(
                format!("{p}self_attn.o_proj.weight"),
                vec![d, q],
                0.3,
                0.0,
            ));
            out.push(t(
                format!("{p}post_attention_layernorm.weight"),
                vec![d],
                0.2,
                1.0,
            ));
            out.push(t(format!("{p}mlp.gate_proj.weight"), vec![ff, d], 0.3, 0.0));
            out.push(t(format!("{p}mlp.up_proj.weight"), vec![ff, d], 0.3, 0.0));
            out.push(t(format!("{p}mlp.down_proj.weight"), vec![d, ff], 0.3, 0.0));
        }
        out.push(t("model.norm.weight".into(), vec![d], 0.2, 1.0));
        if !self.tied {
            out.push(t("lm_head.weight".into(), vec![self.vocab, d], 0.5, 0.0));
        }
        out
    }

    pub fn write_hf(&self, dir: &Path, seed: u64) {
        std::fs::create_dir_all(dir).unwrap();
        let config = serde_json::json!({
            "model_type": self.arch, "hidden_size": self.d, "intermediate_size": self.ff,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "vocab_size": self.vocab, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": self.tied,
            "head_dim": self.head_dim(),
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let weights = self.weights(seed);
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = weights
            .into_iter()
            .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        safetensors::tensor::serialize_to_file(views, None, &dir.join("model.safetensors"))
            .unwrap();
    }

    /// The same weights as an F32 GGUF, with llama.cpp's names and, for
    /// `llama`, q/k rows permuted for its interleaved RoPE.
    pub fn write_gguf(&self, path: &Path, seed: u64, extra_meta: &[(&str, Value)]) {
        self.write_gguf_typed(path, seed, extra_meta, GgmlDType::F32, false)
    }

    /// As [`Tiny::write_gguf`], with every matrix quantized to `dtype` by
    /// candle (vectors stay F32); with `dequantized`, the quantized values
    /// are decoded back and stored as F32 (the same weights, exactly, for a
    /// float reference).
    pub fn write_gguf_typed(
        &self,
        path: &Path,
        seed: u64,
        extra_meta: &[(&str, Value)],
        dtype: GgmlDType,
        dequantized: bool,
    ) {
        let hd = self.head_dim();
        let permute = |v: &[f32], n_head: usize, cols: usize| -> Vec<f32> {
            let mut out = vec![0.0; v.len()];
            for h in 0..n_head {
                for i in 0..hd / 2 {
                    for j in 0..2 {
                        let new_row = h * hd + i * 2 + j;
                        let old_row = h * hd + j * (hd / 2) + i;
                        out[new_row * cols..(new_row + 1) * cols]
                            .copy_from_slice(&v[old_row * cols..(old_row + 1) * cols]);
                    }
                }
            }
            out
        };
        let rename: HashMap<&str, &str> = [
            ("input_layernorm.weight", "attn_norm.weight"),
            ("self_attn.q_proj.weight", "attn_q.weight"),
            ("self_attn.k_proj.weight", "attn_k.weight"),
            ("self_attn.v_proj.weight", "attn_v.weight"),
            ("self_attn.q_proj.bias", "attn_q.bias"),
            ("self_attn.k_proj.bias", "attn_k.bias"),
            ("self_attn.v_proj.bias", "attn_v.bias"),
            ("self_attn.q_norm.weight", "attn_q_norm.weight"),
            ("self_attn.k_norm.weight", "attn_k_norm.weight"),
            ("self_attn.o_proj.weight", "attn_output.weight"),
            ("post_attention_layernorm.weight", "ffn_norm.weight"),
            ("mlp.gate_proj.weight", "ffn_gate.weight"),
            ("mlp.up_proj.weight", "ffn_up.weight"),
            ("mlp.down_proj.weight", "ffn_down.weight"),
        ]
        .into_iter()
        .collect();
        let mut tensors = Vec::new();
        for (name, shape, mut v) in self.weights(seed) {
            let gname = match name.as_str() {
                "model.embed_tokens.weight" => "token_embd.weight".to_string(),
                "model.norm.weight" => "output_norm.weight".to_string(),
                "lm_head.weight" => "output.weight".to_string(),
                n => {
                    let rest = n.strip_prefix("model.layers.").unwrap();
                    let (l, role) = rest.split_once('.').unwrap();
                    format!("blk.{l}.{}", rename[role])
                }
            };
            if self.arch == "llama" && name.ends_with("q_proj.weight") {
                v = permute(&v, self.heads, shape[1]);
            }
            if self.arch == "llama" && name.ends_with("k_proj.weight") {
                v = permute(&v, self.kv_heads, shape[1]);
            }
            let t = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
            let q = if shape.len() == 2 && dtype != GgmlDType::F32 {
                let q = QTensor::quantize(&t, dtype).unwrap();
                if dequantized {
                    let f = q.dequantize(&Device::Cpu).unwrap();
                    QTensor::quantize(&f, GgmlDType::F32).unwrap()
                } else {
                    q
                }
            } else {
                QTensor::quantize(&t, GgmlDType::F32).unwrap()
            };
            tensors.push((gname, q));
        }
        let a = self.arch;
        let mut meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(a.into())),
            (format!("{a}.block_count"), Value::U32(self.layers as u32)),
            (format!("{a}.embedding_length"), Value::U32(self.d as u32)),
            (
                format!("{a}.feed_forward_length"),
                Value::U32(self.ff as u32),
            ),
            (
                format!("{a}.attention.head_count"),
                Value::U32(self.heads as u32),
            ),
            (
                format!("{a}.attention.head_count_kv"),
                Value::U32(self.kv_heads as u32),
            ),
            (format!("{a}.attention.key_length"), Value::U32(hd as u32)),
            (format!("{a}.rope.freq_base"), Value::F32(10000.0)),
            (
                format!("{a}.attention.layer_norm_rms_epsilon"),
                Value::F32(1e-5),
            ),
            (format!("{a}.context_length"), Value::U32(256)),
        ];
        for (k, v) in extra_meta {
            meta.retain(|(mk, _)| mk != k);
            meta.push((k.to_string(), v.clone()));
        }
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> =
            tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut f = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
    }
}

pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("weft-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
