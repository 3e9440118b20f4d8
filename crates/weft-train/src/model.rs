//! The trainable Llama decoder: parameters under Hugging Face names, a
//! forward pass over packed rows, and the masked next-token loss.
//!
//! Matches `transformers`' `LlamaForCausalLM` (RMSNorm, rotate-half RoPE,
//! SwiGLU MLP, no biases, optional tied embeddings), so the saved weights load
//! there and in `weft-model` without conversion.

use crate::config::ModelShape;
use crate::error::Result;
use crate::kernels::{CrossEntropy, DocAttention, RmsNorm, RowLayout, SwiGlu};
use candle_core::{DType, Device, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Parameters by HF name, in a fixed order.
pub struct LlamaParams {
    pub shape: ModelShape,
    pub vars: BTreeMap<String, Var>,
    device: Device,
    /// RoPE tables `[max_position, head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One packed batch: `rows` rows of `len` tokens.
pub struct Batch {
    pub rows: usize,
    pub len: usize,
    /// Input ids, rows x len.
    pub input: Vec<u32>,
    /// Next-token targets, rows x len.
    pub target: Vec<u32>,
    /// 1.0 where the target counts towards the loss.
    pub weight: Vec<f32>,
    /// RoPE position of each input token (restarts at each document).
    pub position: Vec<u32>,
    /// Document of each input token within its row (padding gets its own).
    pub segment: Vec<u32>,
    /// Input tokens that are not padding.
    pub real_tokens: usize,
}

impl Batch {
    /// Tokens that count towards the loss.
    pub fn target_tokens(&self) -> usize {
        self.weight.iter().filter(|w| **w > 0.0).count()
    }
}

fn normal(rng: &mut StdRng, n: usize, std: f64) -> Vec<f32> {
    // Box-Muller; two samples per pair of uniforms.
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

impl LlamaParams {
    /// The parameter names and shapes of `shape`, in HF layout (`[out, in]`).
    pub fn layout(shape: &ModelShape) -> Vec<(String, Vec<usize>)> {
        let d = shape.hidden_size;
        let kv = shape.kv_heads() * shape.head_dim();
        let f = shape.intermediate_size;
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![shape.vocab_size, d],
        )];
        for i in 0..shape.num_hidden_layers {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), vec![d]));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![d, d]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, d]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
        }
        out.push(("model.norm.weight".to_string(), vec![d]));
        if !shape.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![shape.vocab_size, d]));
        }
        out
    }

    /// Fresh weights: N(0, 0.02) matrices, output projections scaled by
    /// 1/sqrt(2 layers) (GPT-2 style), norms at 1.
    pub fn init(shape: &ModelShape, seed: u64, device: &Device) -> Result<LlamaParams> {
        shape.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let resid = 0.02 / (2.0 * shape.num_hidden_layers as f64).sqrt();
        let mut tensors = BTreeMap::new();
        for (name, dims) in Self::layout(shape) {
            let n: usize = dims.iter().product();
            let t = if dims.len() == 1 {
                Tensor::ones(dims.as_slice(), DType::F32, device)?
            } else {
                let std = if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                    resid
                } else {
                    0.02
                };
                Tensor::from_vec(normal(&mut rng, n, std), dims.as_slice(), device)?
            };
            tensors.insert(name, t);
        }
        Self::from_tensors(shape, tensors, device)
    }

    /// Wraps loaded tensors, checking every name and shape.
    pub fn from_tensors(
        shape: &ModelShape,
        mut tensors: BTreeMap<String, Tensor>,
        device: &Device,
    ) -> Result<LlamaParams> {
        shape.validate()?;
        let mut vars = BTreeMap::new();
        for (name, dims) in Self::layout(shape) {
            let t = tensors.remove(&name).ok_or_else(|| {
                crate::error::TrainError::BadShape(format!("missing tensor {name}"))
            })?;
            if t.dims() != dims.as_slice() {
                return Err(crate::error::TrainError::BadShape(format!(
                    "tensor {name} has shape {:?}, expected {dims:?}",
                    t.dims()
                )));
            }
            let t = t.to_dtype(DType::F32)?.to_device(device)?;
            vars.insert(name, Var::from_tensor(&t)?);
        }
        let (cos, sin) = rope_tables(shape);
        Ok(LlamaParams {
            shape: shape.clone(),
            vars,
            device: device.clone(),
            cos,
            sin,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn get(&self, name: &str) -> &Tensor {
        self.vars[name].as_tensor()
    }

    /// The parameters as plain tensors, by name (for saving).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Logits for every position of `batch`: `[rows * len, vocab]`.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let dev = self.device();
        let s = &self.shape;
        let (b, t) = (batch.rows, batch.len);
        let hd = s.head_dim();
        let eps = s.rms_norm_eps as f32;

        let ids = Tensor::from_slice(&batch.input, b * t, dev)?;
        let attention = DocAttention {
            layout: self.row_layout(batch),
            heads: s.num_attention_heads,
            kv_heads: s.kv_heads(),
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            probs: None,
        };

        let embed = self.get("model.embed_tokens.weight");
        let mut x = embed.index_select(&ids, 0)?; // [b*t, d]
        for i in 0..s.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let w = |n: &str| self.get(&format!("{p}.{n}"));
            let hn = x.apply_op2(w("input_layernorm.weight"), RmsNorm { eps })?;
            // One matmul for q, k and v (their weights stacked by rows),
            // one for gate and up; the weights stay separate parameters.
            let qkv_w = Tensor::cat(
                &[
                    w("self_attn.q_proj.weight"),
                    w("self_attn.k_proj.weight"),
                    w("self_attn.v_proj.weight"),
                ],
                0,
            )?;
            let qkv = linear(&hn, &qkv_w)?;
            // Each layer keeps its own softmax probabilities for its backward.
            let layer_attention = DocAttention {
                probs: Some(Default::default()),
                ..attention.clone()
            };
            let ctx = qkv.apply_op1(layer_attention)?;
            x = (x + linear(&ctx, w("self_attn.o_proj.weight"))?)?;

            let hn = x.apply_op2(w("post_attention_layernorm.weight"), RmsNorm { eps })?;
            let gate_up_w = Tensor::cat(&[w("mlp.gate_proj.weight"), w("mlp.up_proj.weight")], 0)?;
            let act = linear(&hn, &gate_up_w)?.apply_op1(SwiGlu)?;
            x = (x + linear(&act, w("mlp.down_proj.weight"))?)?;
        }
        let x = x.apply_op2(self.get("model.norm.weight"), RmsNorm { eps })?;
        let head = if s.tie_word_embeddings {
            embed
        } else {
            self.get("lm_head.weight")
        };
        Ok(linear(&x, head)?)
    }

    fn row_layout(&self, batch: &Batch) -> RowLayout {
        let half = self.shape.head_dim() / 2;
        let (b, t) = (batch.rows, batch.len);
        let mut doc_start = vec![0u32; b * t];
        for r in 0..b {
            for i in 0..t {
                let k = r * t + i;
                doc_start[k] = if i > 0 && batch.segment[k] == batch.segment[k - 1] {
                    doc_start[k - 1]
                } else {
                    i as u32
                };
            }
        }
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for &p in &batch.position {
            let p = (p as usize).min(self.shape.max_position_embeddings - 1);
            cos.extend_from_slice(&self.cos[p * half..(p + 1) * half]);
            sin.extend_from_slice(&self.sin[p * half..(p + 1) * half]);
        }
        RowLayout {
            rows: b,
            len: t,
            doc_start: Arc::new(doc_start),
            cos: Arc::new(cos),
            sin: Arc::new(sin),
        }
    }

    /// Mean cross-entropy over the weighted targets of `batch`, and how many
    /// targets it covers. Returns `None` when no target counts.
    pub fn loss(&self, batch: &Batch) -> Result<Option<(Tensor, usize)>> {
        let n = batch.target_tokens();
        if n == 0 {
            return Ok(None);
        }
        let logits = self.forward(batch)?;
        let loss = logits.apply_op1(CrossEntropy {
            target: Arc::new(batch.target.clone()),
            weight: Arc::new(batch.weight.clone()),
        })?;
        Ok(Some((loss, n)))
    }
}

fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&w.t()?)
}

fn rope_tables(shape: &ModelShape) -> (Vec<f32>, Vec<f32>) {
    let half = shape.head_dim() / 2;
    let n = shape.max_position_embeddings;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for i in 0..half {
            let inv = 1.0
                / shape
                    .rope_theta
                    .powf((2 * i) as f64 / shape.head_dim() as f64);
            let a = p as f64 * inv;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}
