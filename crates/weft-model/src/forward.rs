//! The forward pass over a batch of sequences, each at its own position and
//! each reading its KV through its own block table.
//!
//! One call runs every token of every sequence in the batch through all
//! layers together: the matrix multiplications see all tokens at once (each
//! weight is read once per step), and attention reads each sequence's KV
//! slots through its block table. Decoding 8 threads costs one step with 8
//! tokens; prefilling a prompt is one step with many tokens of one sequence.
//!
//! A sequence may also see KV that is not in its own table
//! ([`SeqStep::shared`]): slot ranges of other tables, visible in full to
//! every new token. That is how a KV-merge join works: the parent continues
//! over its prefix plus every child's KV where the children wrote it, with
//! RoPE positions ([`SeqStep::pos_start`]) decoupled from slot indices.

use half::f16;
use rayon::prelude::*;

use crate::config::RopeStyle;
use crate::error::{ModelError, Result};
use crate::kernels::{decode, scores_f16, weighted_sum_f16, SyncPtr};
use crate::kv_cache::{KvCache, LayerKv};
use crate::model::{Model, Projection};
use crate::prefix_attention::{attend_runs, shared_runs, Dims, Partial};
use crate::weights::Scratch;

/// One sequence's part of a forward step.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqStep<'a> {
    /// New tokens to run.
    pub tokens: &'a [u32],
    /// RoPE position of `tokens[0]`; the rest follow on.
    pub pos_start: usize,
    /// KV slot (index into the sequence's block table) of `tokens[0]`. Token
    /// `j` attends to slots `0..=kv_start + j`.
    pub kv_start: usize,
    /// The blocks this sequence's KV slots live in.
    pub block_table: &'a [u32],
    /// Return logits for every new token, not only the last.
    pub all_logits: bool,
    /// KV written earlier into other tables that every new token attends
    /// to in full, besides its own table's slots `0..=kv_start + j`
    /// (KV-merge joins: the prefix and each child's slots). Empty for an
    /// ordinary sequence. These slots are only read, never written.
    pub shared: &'a [KvSpan<'a>],
}

/// Slots `start..end` of a block table, seen as already-computed context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvSpan<'a> {
    pub block_table: &'a [u32],
    pub start: usize,
    pub end: usize,
}

/// Tokens per MLP pass within a forward step (see `Model::forward`'s MLP).
const MLP_TOKENS: usize = 32;

/// Buffers reused from step to step.
#[derive(Default)]
pub struct Workspace {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    part: Vec<f32>,
    gu: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    scratch: Scratch,
}

pub(crate) fn resize(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.clear();
    v.resize(n, 0.0);
    v
}

pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|v| (*v as f64) * (*v as f64)).sum();
    let scale = (1.0 / (ss / x.len() as f64 + eps as f64).sqrt()) as f32;
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

pub(crate) fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let ss: f64 = x.iter().map(|v| (*v as f64) * (*v as f64)).sum();
    let scale = (1.0 / (ss / x.len() as f64 + eps as f64).sqrt()) as f32;
    for (v, g) in x.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
}

pub(crate) fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = cos.len();
    match style {
        RopeStyle::Interleaved => {
            for i in 0..half {
                let (a, b) = (x[2 * i], x[2 * i + 1]);
                x[2 * i] = a * cos[i] - b * sin[i];
                x[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
        RopeStyle::Halves => {
            for i in 0..half {
                let (a, b) = (x[i], x[i + half]);
                x[i] = a * cos[i] - b * sin[i];
                x[i + half] = a * sin[i] + b * cos[i];
            }
        }
    }
}

impl Model {
    fn check_steps(&self, kv: &KvCache, seqs: &[SeqStep]) -> Result<()> {
        for (i, s) in seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(ModelError::Invalid(format!("sequence {i} has no tokens")));
            }
            if let Some(t) = s
                .tokens
                .iter()
                .find(|t| **t as usize >= self.config.vocab_size)
            {
                return Err(ModelError::Invalid(format!(
                    "token id {t} is outside the vocabulary ({} tokens)",
                    self.config.vocab_size
                )));
            }
            let slots = s.kv_start + s.tokens.len();
            if slots > s.block_table.len() * kv.block_size {
                return Err(ModelError::Invalid(format!(
                    "sequence {i} needs {slots} KV slots but its block table holds {}",
                    s.block_table.len() * kv.block_size
                )));
            }
            if let Some(b) = s.block_table.iter().find(|b| **b as usize >= kv.n_blocks) {
                return Err(ModelError::Invalid(format!(
                    "block {b} is outside the KV cache ({} blocks)",
                    kv.n_blocks
                )));
            }
            for span in s.shared {
                if span.start > span.end || span.end > span.block_table.len() * kv.block_size {
                    return Err(ModelError::Invalid(format!(
                        "sequence {i} shares slots {}..{} of a block table that holds {}",
                        span.start,
                        span.end,
                        span.block_table.len() * kv.block_size
                    )));
                }
                if let Some(b) = span
                    .block_table
                    .iter()
                    .find(|b| **b as usize >= kv.n_blocks)
                {
                    return Err(ModelError::Invalid(format!(
                        "shared block {b} is outside the KV cache ({} blocks)",
                        kv.n_blocks
                    )));
                }
            }
        }
        Ok(())
    }

    /// Runs one step. Returns, per sequence, its logits: `vocab` values for the
    /// last token, or `tokens.len() * vocab` with `all_logits`.
    pub fn forward(
        &self,
        kv: &mut KvCache,
        seqs: &[SeqStep],
        ws: &mut Workspace,
    ) -> Result<Vec<Vec<f32>>> {
        self.check_steps(kv, seqs)?;
        Ok(self.pool.install(|| self.forward_checked(kv, seqs, ws)))
    }

    fn forward_checked(
        &self,
        kv: &mut KvCache,
        seqs: &[SeqStep],
        ws: &mut Workspace,
    ) -> Vec<Vec<f32>> {
        let cfg = &self.config;
        let (d, qd, kvd, hd, ff) = (
            cfg.d_model,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.head_dim,
            cfg.d_ff,
        );
        let n_tok: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let bs = kv.block_size;

        // Slot addresses of every sequence's context (shared spans first,
        // then its own table), and each token's owner.
        let address = |table: &[u32], i: usize| table[i / bs] as usize * bs + i % bs;
        let slots: Vec<Vec<usize>> =
            seqs.iter()
                .map(|s| {
                    let shared = s.shared.iter().flat_map(|span| {
                        (span.start..span.end).map(|i| address(span.block_table, i))
                    });
                    shared
                        .chain((0..s.kv_start + s.tokens.len()).map(|i| address(s.block_table, i)))
                        .collect()
                })
                .collect();
        let n_shared: Vec<usize> = seqs
            .iter()
            .map(|s| s.shared.iter().map(|span| span.end - span.start).sum())
            .collect();
        // Runs of context that several sequences share (forked threads):
        // attended once for all of them per layer.
        let visible: Vec<usize> = seqs
            .iter()
            .zip(&n_shared)
            .map(|(s, n)| n + s.kv_start)
            .collect();
        let (runs, run_len) = if !self.shared_prefix_attention {
            (Vec::new(), vec![0; seqs.len()])
        } else {
            let tokens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
            shared_runs(&slots, &visible, &tokens)
        };
        let mut tok_offset = Vec::with_capacity(seqs.len());
        let mut owner = Vec::with_capacity(n_tok);
        for (i, s) in seqs.iter().enumerate() {
            tok_offset.push(owner.len());
            owner.extend((0..s.tokens.len()).map(|j| (i, j)));
        }

        // Embeddings and RoPE tables.
        let x = resize(&mut ws.x, n_tok * d);
        for (t, &(i, j)) in owner.iter().enumerate() {
            self.embed
                .row(seqs[i].tokens[j] as usize, &mut x[t * d..(t + 1) * d]);
        }
        let half = cfg.rope.dim / 2;
        resize(&mut ws.cos, n_tok * half);
        resize(&mut ws.sin, n_tok * half);
        for (t, &(i, j)) in owner.iter().enumerate() {
            let p = (seqs[i].pos_start + j) as f32;
            for (f, inv) in self.inv_freqs.iter().enumerate() {
                let (s, c) = (p * inv).sin_cos();
                ws.cos[t * half + f] = c * cfg.rope.attention_factor;
                ws.sin[t * half + f] = s * cfg.rope.attention_factor;
            }
        }

        let qkv_w = qd + 2 * kvd;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = resize(&mut ws.h, n_tok * d);
            for t in 0..n_tok {
                rms_norm(
                    &ws.x[t * d..(t + 1) * d],
                    &layer.attn_norm,
                    cfg.norm_eps,
                    &mut h[t * d..(t + 1) * d],
                );
            }
            project(
                &layer.qkv,
                &ws.h,
                n_tok,
                &mut ws.qkv,
                &mut ws.part,
                &mut ws.scratch,
            );
            if let Some(b) = &layer.qkv_bias {
                for row in ws.qkv.chunks_exact_mut(qkv_w) {
                    row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                }
            }
            // q/k norms, RoPE, and the KV write.
            let layer_kv = kv.layer_mut(l);
            for (t, &(i, j)) in owner.iter().enumerate() {
                let row = &mut ws.qkv[t * qkv_w..(t + 1) * qkv_w];
                let (cos, sin) = (
                    &ws.cos[t * half..(t + 1) * half],
                    &ws.sin[t * half..(t + 1) * half],
                );
                let (q, rest) = row.split_at_mut(qd);
                let (k, v) = rest.split_at_mut(kvd);
                for head in q.chunks_exact_mut(hd) {
                    if let Some(w) = &layer.q_norm {
                        rms_norm_in_place(head, w, cfg.norm_eps);
                    }
                    rope(&mut head[..cfg.rope.dim], cos, sin, cfg.rope.style);
                }
                for head in k.chunks_exact_mut(hd) {
                    if let Some(w) = &layer.k_norm {
                        rms_norm_in_place(head, w, cfg.norm_eps);
                    }
                    rope(&mut head[..cfg.rope.dim], cos, sin, cfg.rope.style);
                }
                let slot = slots[i][n_shared[i] + seqs[i].kv_start + j];
                for (dst, src) in layer_kv.k[slot * kvd..(slot + 1) * kvd]
                    .iter_mut()
                    .zip(k.iter())
                {
                    *dst = f16::from_f32(*src);
                }
                for (dst, src) in layer_kv.v[slot * kvd..(slot + 1) * kvd]
                    .iter_mut()
                    .zip(v.iter())
                {
                    *dst = f16::from_f32(*src);
                }
            }
            // The attention output goes to `h` (the normed input, read only by
            // the q/k/v projection above), and each projection's output to
            // `qkv` (read only by the attention): a prefill step holds three
            // token-sized buffers, not five.
            resize(&mut ws.h, n_tok * qd);
            let partial = (!runs.is_empty()).then(|| {
                let rows: Vec<std::ops::Range<usize>> = seqs
                    .iter()
                    .zip(&tok_offset)
                    .map(|(s, &o)| o..o + s.tokens.len())
                    .collect();
                let dims = Dims {
                    n_heads: cfg.n_heads,
                    n_kv_heads: cfg.n_kv_heads,
                    head_dim: hd,
                    qkv_width: qkv_w,
                    kv_dim: kvd,
                    scale: 1.0 / (hd as f32).sqrt(),
                };
                attend_runs(kv.layer(l), &ws.qkv, &runs, &slots, &rows, n_tok, &dims)
            });
            self.attention(
                kv.layer(l),
                &ws.qkv,
                seqs,
                &slots,
                &n_shared,
                &tok_offset,
                (&run_len, partial.as_ref()),
                &mut ws.h,
            );

            let out = resize(&mut ws.qkv, n_tok * d);
            layer.o.matmul(&ws.h, n_tok, out, &mut ws.scratch);
            ws.x.iter_mut().zip(out.iter()).for_each(|(x, o)| *x += o);

            let h = resize(&mut ws.h, n_tok * d);
            for t in 0..n_tok {
                rms_norm(
                    &ws.x[t * d..(t + 1) * d],
                    &layer.ffn_norm,
                    cfg.norm_eps,
                    &mut h[t * d..(t + 1) * d],
                );
            }
            // The MLP runs over at most MLP_TOKENS tokens at a time: its
            // [gate | up] rows are the widest buffer of a prefill step, and
            // every token's result is the same whatever the split.
            let out = resize(&mut ws.qkv, n_tok * d);
            for t0 in (0..n_tok).step_by(MLP_TOKENS) {
                let n = MLP_TOKENS.min(n_tok - t0);
                project(
                    &layer.gate_up,
                    &ws.h[t0 * d..(t0 + n) * d],
                    n,
                    &mut ws.gu,
                    &mut ws.part,
                    &mut ws.scratch,
                );
                // SwiGLU in place (no separate buffer), rows in parallel.
                swiglu_in_place(&mut ws.gu, ff, n);
                layer.down.matmul(
                    &ws.gu[..n * ff],
                    n,
                    &mut out[t0 * d..(t0 + n) * d],
                    &mut ws.scratch,
                );
            }
            ws.x.iter_mut().zip(out.iter()).for_each(|(x, o)| *x += o);
        }

        // Final norm and the output head, only on the rows asked for.
        let mut rows = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            let n = s.tokens.len();
            let first = if s.all_logits { 0 } else { n - 1 };
            rows.extend((first..n).map(|j| tok_offset[i] + j));
        }
        let h = resize(&mut ws.h, rows.len() * d);
        for (r, &t) in rows.iter().enumerate() {
            rms_norm(
                &ws.x[t * d..(t + 1) * d],
                &self.norm,
                cfg.norm_eps,
                &mut h[r * d..(r + 1) * d],
            );
        }
        let vocab = cfg.vocab_size;
        let mut logits = vec![0.0f32; rows.len() * vocab];
        self.output
            .matmul(&ws.h, rows.len(), &mut logits, &mut ws.scratch);
        let mut out = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for s in seqs {
            let n = if s.all_logits { s.tokens.len() } else { 1 };
            out.push(logits[at * vocab..(at + n) * vocab].to_vec());
            at += n;
        }
        out
    }

    /// Causal attention of every new token over its sequence's KV slots
    /// (all shared slots, then its own up to itself).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        kv: &LayerKv,
        qkv: &[f32],
        seqs: &[SeqStep],
        slots: &[Vec<usize>],
        n_shared: &[usize],
        tok_offset: &[usize],
        (run_len, partial): (&[usize], Option<&Partial>),
        out: &mut [f32],
    ) {
        let cfg = &self.config;
        let (qd, kvd, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
        let qkv_w = qd + 2 * kvd;
        let group = cfg.n_heads / cfg.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        const CHUNK: usize = 16;
        // Decode steps over long contexts are split along the context
        // (`kernels::decode`): one task per (KV group, part). The part count
        // depends on the context length alone, so a sequence gets the same
        // result alone or in a batch, on any number of cores.
        let parts: Vec<usize> = seqs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let len = n_shared[i] + s.kv_start + 1;
                let split = self.split_decode_attention
                    && s.tokens.len() == 1
                    && run_len[i] == 0
                    && decode::supports(hd)
                    && len >= decode::SPLIT_MIN;
                if split {
                    (len / 128).clamp(1, 8)
                } else {
                    0
                }
            })
            .collect();
        let mut tasks = Vec::new();
        let mut split_tasks = Vec::new();
        for (i, &n) in parts.iter().enumerate() {
            if n > 0 {
                decode::count_split_step();
            }
            for g in 0..cfg.n_kv_heads {
                for part in 0..n {
                    split_tasks.push((i, g, part));
                }
            }
        }
        // Every split task's partial state, side by side.
        let plen = decode::partial_len(group, hd);
        let mut split_buf = vec![0f32; split_tasks.len() * plen];
        let split_ptr = SyncPtr(split_buf.as_mut_ptr());
        // One task per query head (not per kv head): every head computes
        // its own scores anyway, and a decode step of one sequence then
        // spreads over the cores (9 heads, not 3 kv heads, for SmolLM2).
        for (i, s) in seqs.iter().enumerate().filter(|(i, _)| parts[*i] == 0) {
            for h in 0..cfg.n_heads {
                for j0 in (0..s.tokens.len()).step_by(CHUNK) {
                    tasks.push((i, h, j0, (j0 + CHUNK).min(s.tokens.len())));
                }
            }
        }
        let ptr = SyncPtr(out.as_mut_ptr());
        let run = |&(i, h, j0, j1): &(usize, usize, usize, usize)| {
            let s = &seqs[i];
            let g = h / group;
            let mut scores = Vec::with_capacity(n_shared[i] + s.kv_start + j1);
            for j in j0..j1 {
                let t = tok_offset[i] + j;
                let ctx = &slots[i][..n_shared[i] + s.kv_start + j + 1];
                let q = &qkv[t * qkv_w + h * hd..t * qkv_w + (h + 1) * hd];
                if let (Some(p), true) = (partial, run_len[i] > 0) {
                    // The shared run is done; finish over the rest.
                    let id = t * cfg.n_heads + h;
                    // SAFETY: (token t, head h) belongs to this task alone.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(ptr.get().add(t * qd + h * hd), hd)
                    };
                    finish_query(
                        q,
                        kv,
                        &ctx[run_len[i]..],
                        g * hd,
                        kvd,
                        scale,
                        (p.max[id], p.sum[id], &p.out[id * hd..(id + 1) * hd]),
                        &mut scores,
                        o,
                    );
                    continue;
                }
                scores.clear();
                scores.resize(ctx.len(), 0.0);
                scores_f16(q, &kv.k, ctx, kvd, g * hd, scale, &mut scores);
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for sc in scores.iter_mut() {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                // SAFETY: (token t, head h) belongs to this task alone.
                let o =
                    unsafe { std::slice::from_raw_parts_mut(ptr.get().add(t * qd + h * hd), hd) };
                o.fill(0.0);
                let inv = 1.0 / sum;
                scores.iter_mut().for_each(|p| *p *= inv);
                weighted_sum_f16(o, &scores, &kv.v, ctx, kvd, g * hd);
            }
        };
        let run_split = |n: usize| {
            let (i, g, part) = split_tasks[n];
            let s = &seqs[i];
            let t = tok_offset[i];
            let ctx = &slots[i][..n_shared[i] + s.kv_start + 1];
            let (lo, hi) = (
                part * ctx.len() / parts[i],
                (part + 1) * ctx.len() / parts[i],
            );
            let q = |h: usize| &qkv[t * qkv_w + h * hd..t * qkv_w + (h + 1) * hd];
            let mut few: [&[f32]; 16] = [&[]; 16];
            let many: Vec<&[f32]>;
            let qs: &[&[f32]] = if group <= few.len() {
                for (x, h) in few.iter_mut().zip(g * group..(g + 1) * group) {
                    *x = q(h);
                }
                &few[..group]
            } else {
                many = (g * group..(g + 1) * group).map(q).collect();
                &many
            };
            // SAFETY: task n alone writes floats n * plen .. (n + 1) * plen.
            let buf =
                unsafe { std::slice::from_raw_parts_mut(split_ptr.get().add(n * plen), plen) };
            SCRATCH.with(|scratch| {
                decode::attend_group(
                    qs,
                    &kv.k,
                    &kv.v,
                    &ctx[lo..hi],
                    kvd,
                    g * hd,
                    scale,
                    &mut scratch.borrow_mut(),
                    decode::partial(buf, group),
                )
            });
        };
        let total = tasks.len() + split_tasks.len();
        if total == 1 && split_tasks.is_empty() {
            run(&tasks[0]);
        } else {
            (0..total).into_par_iter().for_each(|n| {
                if n < split_tasks.len() {
                    run_split(n)
                } else {
                    run(&tasks[n - split_tasks.len()])
                }
            });
        }
        // Merge each group's parts into its heads' outputs.
        let results: Vec<decode::Partial> = split_buf
            .chunks_mut(plen)
            .map(|b| decode::partial(b, group))
            .collect();
        let mut at = 0;
        for (i, &n) in parts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let t = tok_offset[i];
            for g in 0..cfg.n_kv_heads {
                let heads = &mut out[t * qd + g * group * hd..t * qd + (g + 1) * group * hd];
                let mut outs: Vec<&mut [f32]> = heads.chunks_exact_mut(hd).collect();
                decode::merge_parts(&results[at..at + n], hd, &mut outs);

                at += n;
            }
        }
    }
}

thread_local! {
    /// Each worker's scores buffer for split decode attention.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Completes one query's softmax over `ctx` starting from the partial state
/// `(max, sum, out)` of a shared run, writing the normalised output.
#[allow(clippy::too_many_arguments)]
fn finish_query(
    q: &[f32],
    kv: &LayerKv,
    ctx: &[usize],
    col: usize,
    kvd: usize,
    scale: f32,
    (m1, l1, o1): (f32, f32, &[f32]),
    scores: &mut Vec<f32>,
    o: &mut [f32],
) {
    // The many-row kernels: the same bits as `dot_f16` / `axpy_f16` row by
    // row, with the query and the output held in registers.
    scores.clear();
    scores.resize(ctx.len(), 0.0);
    scores_f16(q, &kv.k, ctx, kvd, col, scale, scores);
    let max = scores.iter().fold(m1, |m, &s| m.max(s));
    let alpha = (m1 - max).exp();
    let mut sum = l1 * alpha;
    for (o, x) in o.iter_mut().zip(o1) {
        *o = x * alpha;
    }
    for sc in scores.iter_mut() {
        *sc = (*sc - max).exp();
        sum += *sc;
    }
    weighted_sum_f16(o, scores, &kv.v, ctx, kvd, col);
    let inv = 1.0 / sum;
    o.iter_mut().for_each(|x| *x *= inv);
}

/// SwiGLU over `n_tok` rows of `[gate (ff) | up (ff)]`, in place: token
/// `t`'s `silu(gate) * up` goes to `gu[t * ff..(t + 1) * ff]`. The results
/// first go to a scratch row per token (the rows are computed in parallel,
/// each exactly as one at a time), then are compacted in order.
fn swiglu_in_place(gu: &mut [f32], ff: usize, n_tok: usize) {
    let silu_mul = |row: &mut [f32]| {
        let (g, u) = row.split_at_mut(ff);
        for (g, u) in g.iter_mut().zip(u.iter()) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    };
    if n_tok >= 2 {
        gu[..2 * ff * n_tok]
            .par_chunks_mut(2 * ff)
            .for_each(silu_mul);
    } else if n_tok == 1 {
        silu_mul(&mut gu[..2 * ff]);
    }
    // Row t's result sits at 2 t ff; move it to t ff (t ff <= 2 t ff, in
    // increasing t, so nothing unread is overwritten).
    for t in 1..n_tok {
        gu.copy_within(2 * t * ff..2 * t * ff + ff, t * ff);
    }
}

/// Computes several projections of `x` into one row per token, laid out as
/// the projections' outputs side by side.
pub(crate) fn project(
    p: &Projection,
    x: &[f32],
    n_tok: usize,
    out: &mut Vec<f32>,
    part: &mut Vec<f32>,
    scratch: &mut Scratch,
) {
    let width = p.rows();
    let out = resize(out, n_tok * width);
    match p {
        Projection::Fused(w) => w.matmul(x, n_tok, out, scratch),
        Projection::Split(ws) => {
            let mut col = 0;
            // Parts of different quantized types share one quantization of x.
            let mut quantized = false;
            for w in ws {
                let r = w.rows();
                let part = resize(part, n_tok * r);
                if w.takes_quantized_acts() {
                    if !quantized {
                        crate::kernels::quantize_acts(x, n_tok, w.cols(), &mut scratch.acts);
                        quantized = true;
                    }
                    w.matmul_quantized(&scratch.acts, part);
                } else {
                    w.matmul(x, n_tok, part, scratch);
                }
                for t in 0..n_tok {
                    out[t * width + col..t * width + col + r]
                        .copy_from_slice(&part[t * r..(t + 1) * r]);
                }
                col += r;
            }
        }
    }
}
