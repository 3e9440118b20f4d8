//! A slow, dense forward pass with an explicit attention mask and explicit
//! position ids: the reference the paged forward pass is checked against
//! where its layout is not a plain causal sequence (KV-merge joins).
//!
//! No KV cache and no block tables: every token's K and V rows are kept in
//! one dense array (rounded to f16, as the KV cache stores them) and token
//! `i` attends to token `j` exactly when `mask(i, j)` says so, keys taken
//! in token order. The arithmetic primitives (projections, the f16 dot
//! product and accumulation) are the fast path's, so a layout that matches
//! gives the same logits up to summation order; what is independent is
//! which keys each query sees and at which position each token sits.

use half::f16;

use crate::error::{ModelError, Result};
use crate::forward::{project, resize, rms_norm, rms_norm_in_place, rope};
use crate::kernels::{axpy_f16, dot_f16};
use crate::model::Model;
use crate::weights::Scratch;

impl Model {
    /// Logits (`tokens.len() * vocab`) of one dense forward pass in which
    /// token `i` sits at RoPE position `positions[i]` and attends to token
    /// `j` where `mask(i, j)` is true. Every token must see at least itself.
    /// Slow (quadratic, single threaded attention): for tests and checks.
    pub fn forward_masked(
        &self,
        tokens: &[u32],
        positions: &[usize],
        mask: &dyn Fn(usize, usize) -> bool,
    ) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let n = tokens.len();
        if n == 0 || positions.len() != n {
            return Err(ModelError::Invalid(format!(
                "{n} tokens but {} positions",
                positions.len()
            )));
        }
        if let Some(t) = tokens.iter().find(|t| **t as usize >= cfg.vocab_size) {
            return Err(ModelError::Invalid(format!(
                "token id {t} is outside the vocabulary ({} tokens)",
                cfg.vocab_size
            )));
        }
        if let Some(i) = (0..n).find(|&i| !mask(i, i)) {
            return Err(ModelError::Invalid(format!(
                "token {i} does not attend to itself"
            )));
        }
        let visible: Vec<Vec<usize>> = (0..n)
            .map(|i| (0..n).filter(|&j| mask(i, j)).collect())
            .collect();
        Ok(self
            .pool
            .install(|| self.forward_masked_checked(tokens, positions, &visible)))
    }

    fn forward_masked_checked(
        &self,
        tokens: &[u32],
        positions: &[usize],
        visible: &[Vec<usize>],
    ) -> Vec<f32> {
        let cfg = &self.config;
        let (d, qd, kvd, hd, ff) = (
            cfg.d_model,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.head_dim,
            cfg.d_ff,
        );
        let n = tokens.len();
        let qkv_w = qd + 2 * kvd;
        let group = cfg.n_heads / cfg.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let half = cfg.rope.dim / 2;
        let mut scratch = Scratch::default();
        let (mut h, mut qkv, mut part, mut tmp, mut gu, mut act) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);

        let mut x = vec![0.0f32; n * d];
        for (t, &id) in tokens.iter().enumerate() {
            self.embed.row(id as usize, &mut x[t * d..(t + 1) * d]);
        }
        let mut cos = vec![0.0f32; n * half];
        let mut sin = vec![0.0f32; n * half];
        for (t, &p) in positions.iter().enumerate() {
            for (f, inv) in self.inv_freqs.iter().enumerate() {
                let (s, c) = (p as f32 * inv).sin_cos();
                cos[t * half + f] = c * cfg.rope.attention_factor;
                sin[t * half + f] = s * cfg.rope.attention_factor;
            }
        }
        for layer in &self.layers {
            let hb = resize(&mut h, n * d);
            for t in 0..n {
                rms_norm(
                    &x[t * d..(t + 1) * d],
                    &layer.attn_norm,
                    cfg.norm_eps,
                    &mut hb[t * d..(t + 1) * d],
                );
            }
            project(&layer.qkv, &h, n, &mut qkv, &mut part, &mut scratch);
            if let Some(b) = &layer.qkv_bias {
                for row in qkv.chunks_exact_mut(qkv_w) {
                    row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                }
            }
            for (t, row) in qkv.chunks_exact_mut(qkv_w).enumerate() {
                let (c, s) = (
                    &cos[t * half..(t + 1) * half],
                    &sin[t * half..(t + 1) * half],
                );
                let (q, kv) = row.split_at_mut(qd);
                for head in q.chunks_exact_mut(hd) {
                    if let Some(w) = &layer.q_norm {
                        rms_norm_in_place(head, w, cfg.norm_eps);
                    }
                    rope(&mut head[..cfg.rope.dim], c, s, cfg.rope.style);
                }
                let k = &mut kv[..kvd];
                for head in k.chunks_exact_mut(hd) {
                    if let Some(w) = &layer.k_norm {
                        rms_norm_in_place(head, w, cfg.norm_eps);
                    }
                    rope(&mut head[..cfg.rope.dim], c, s, cfg.rope.style);
                }
            }
            // K and V as the KV cache holds them (f16), token by token.
            let k16: Vec<f16> = (0..n)
                .flat_map(|t| &qkv[t * qkv_w + qd..t * qkv_w + qd + kvd])
                .map(|v| f16::from_f32(*v))
                .collect();
            let v16: Vec<f16> = (0..n)
                .flat_map(|t| &qkv[t * qkv_w + qd + kvd..(t + 1) * qkv_w])
                .map(|v| f16::from_f32(*v))
                .collect();
            let mut attn = vec![0.0f32; n * qd];
            for i in 0..n {
                for head in 0..cfg.n_heads {
                    let g = head / group;
                    let q = &qkv[i * qkv_w + head * hd..][..hd];
                    let scores: Vec<f32> = visible[i]
                        .iter()
                        .map(|&j| dot_f16(q, &k16[j * kvd + g * hd..][..hd]) * scale)
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let inv = 1.0 / weights.iter().sum::<f32>();
                    let out = &mut attn[i * qd + head * hd..][..hd];
                    for (&j, w) in visible[i].iter().zip(&weights) {
                        axpy_f16(out, w * inv, &v16[j * kvd + g * hd..][..hd]);
                    }
                }
            }
            let tb = resize(&mut tmp, n * d);
            layer.o.matmul(&attn, n, tb, &mut scratch);
            x.iter_mut().zip(&tmp).for_each(|(x, o)| *x += o);

            let hb = resize(&mut h, n * d);
            for t in 0..n {
                rms_norm(
                    &x[t * d..(t + 1) * d],
                    &layer.ffn_norm,
                    cfg.norm_eps,
                    &mut hb[t * d..(t + 1) * d],
                );
            }
            project(&layer.gate_up, &h, n, &mut gu, &mut part, &mut scratch);
            let ab = resize(&mut act, n * ff);
            for (t, a) in ab.chunks_exact_mut(ff).enumerate() {
                let (g, u) = gu[t * 2 * ff..(t + 1) * 2 * ff].split_at(ff);
                for ((a, g), u) in a.iter_mut().zip(g).zip(u) {
                    *a = g / (1.0 + (-g).exp()) * u;
                }
            }
            let tb = resize(&mut tmp, n * d);
            layer.down.matmul(&act, n, tb, &mut scratch);
            x.iter_mut().zip(&tmp).for_each(|(x, o)| *x += o);
        }
        let hb = resize(&mut h, n * d);
        for t in 0..n {
            rms_norm(
                &x[t * d..(t + 1) * d],
                &self.norm,
                cfg.norm_eps,
                &mut hb[t * d..(t + 1) * d],
            );
        }
        let mut logits = vec![0.0f32; n * cfg.vocab_size];
        self.output.matmul(&h, n, &mut logits, &mut scratch);
        logits
    }
}
