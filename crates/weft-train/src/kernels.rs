//! Fused CPU ops with hand-written backward passes, plugged into candle's
//! autograd as custom ops.
//!
//! Built from candle's elementwise ops, one training step of a small model
//! spent most of its time in allocation, page faults and thread hand-offs of
//! dozens of tiny ops per layer, and attention over packed rows computed (then
//! masked away) every cross-document score. These ops do each job in one
//! pass:
//! - [`DocAttention`]: RoPE + causal attention restricted to each token's own
//!   document (work grows with the sum of squared document lengths, not with
//!   the squared row length), with GQA;
//! - [`RmsNorm`], [`SwiGlu`]: norm and gated MLP activation;
//! - [`CrossEntropy`]: weighted mean next-token loss straight from logits;
//! - [`PolicyLoss`]: the clipped policy-gradient loss of PPO/GRPO, with an
//!   optional KL penalty to a reference policy, straight from logits.
//!
//! Matmuls stay with candle (gemm). Each op is checked against the same
//! computation written with candle's own differentiable ops (`tests` below).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use weft_model::kernels::Isa;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(d) => d.as_slice(),
        _ => candle_core::bail!("{what}: expected f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Runs `f` on the f32 values of the CPU tensor `t`, borrowed from its
/// storage (copied only when `t` is not contiguous). The backward passes
/// read their inputs this way: copying them out (`to_vec1`) ran on one
/// thread and took about 3% of a training step.
pub(crate) fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(slice(s, layout, "tensor")?),
        _ => candle_core::bail!("expected a CPU tensor"),
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums vectorize well.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Per-token layout of packed rows, shared by the attention op.
#[derive(Debug, Clone)]
pub struct RowLayout {
    pub rows: usize,
    pub len: usize,
    /// For each token, the index (within its row) where its document starts.
    pub doc_start: Arc<Vec<u32>>,
    /// RoPE tables per token: `[rows * len, head_dim / 2]`.
    pub cos: Arc<Vec<f32>>,
    pub sin: Arc<Vec<f32>>,
}

/// The attention probabilities one forward pass computed, kept for its
/// backward pass: per (row, head, document start), the query blocks'
/// `[m, i1]` matrices as [`DocAttention::probs`] returns them.
pub type ProbsCache = Arc<Mutex<HashMap<(usize, usize, usize), Vec<Vec<f32>>>>>;

/// The most attention probabilities (f32 values) one op keeps from its
/// forward pass for its backward pass: 32 Mi values, 128 MiB per layer.
/// Larger batches recompute them in the backward pass (as FlashAttention
/// always does); the Countdown models' training rows keep 9 Mi per layer.
pub const PROBS_CACHE_VALUES: usize = 32 << 20;

/// RoPE + document-masked causal attention of one fused projection
/// `qkv [rows*len, (heads + 2 kv_heads) * hd]`: each token's queries, then
/// its keys, then its values (pre-RoPE), as `x W^T` gives them for `W` the
/// q, k and v weights stacked by rows (one matmul instead of three).
/// Output `[rows*len, heads*hd]`.
///
/// With `probs: Some(cache)`, the forward pass keeps its softmax
/// probabilities (up to [`PROBS_CACHE_VALUES`]) and the backward pass takes
/// them instead of recomputing `softmax(QK^T)`; the gradients are the same
/// to the bit. Give every layer its own cache.
#[derive(Debug, Clone)]
pub struct DocAttention {
    pub layout: RowLayout,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub probs: Option<ProbsCache>,
}

impl DocAttention {
    fn rope_into(&self, token: usize, x: &[f32], out: &mut [f32]) {
        let half = self.head_dim / 2;
        let cos = &self.layout.cos[token * half..(token + 1) * half];
        let sin = &self.layout.sin[token * half..(token + 1) * half];
        for i in 0..half {
            let (a, b) = (x[i], x[i + half]);
            out[i] = a * cos[i] - b * sin[i];
            out[i + half] = b * cos[i] + a * sin[i];
        }
    }

    /// Transpose of the rotation: gradient w.r.t. the pre-RoPE input.
    fn rope_back(&self, token: usize, g: &[f32], out: &mut [f32]) {
        let half = self.head_dim / 2;
        let cos = &self.layout.cos[token * half..(token + 1) * half];
        let sin = &self.layout.sin[token * half..(token + 1) * half];
        for i in 0..half {
            let (a, b) = (g[i], g[i + half]);
            out[i] = a * cos[i] + b * sin[i];
            out[i + half] = b * cos[i] - a * sin[i];
        }
    }

    /// The documents of row `r`: `(start, end)` token ranges.
    fn documents(&self, r: usize) -> Vec<(usize, usize)> {
        let t = self.layout.len;
        let starts = &self.layout.doc_start[r * t..(r + 1) * t];
        let mut out = Vec::new();
        let mut i = 0;
        while i < t {
            let s = starts[i] as usize;
            let mut e = i + 1;
            while e < t && starts[e] as usize == s {
                e += 1;
            }
            out.push((i, e));
            i = e;
        }
        out
    }

    /// Row width of the fused input, and the column where the keys and
    /// the values start.
    fn widths(&self) -> (usize, usize, usize) {
        let (qw, kw) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        (qw + 2 * kw, qw, qw + kw)
    }

    /// Tokens `[s, e)` of row `r`, the `hd` columns from `col` of a matrix
    /// with rows of `width`, RoPE applied when `rotate`: `[e - s, hd]`.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        x: &[f32],
        width: usize,
        col: usize,
        r: usize,
        (s, e): (usize, usize),
        rotate: bool,
    ) -> Vec<f32> {
        let (t, hd) = (self.layout.len, self.head_dim);
        let mut out = vec![0f32; (e - s) * hd];
        for i in s..e {
            let tok = r * t + i;
            let src = &x[tok * width + col..tok * width + col + hd];
            let dst = &mut out[(i - s) * hd..(i - s + 1) * hd];
            if rotate {
                self.rope_into(tok, src, dst);
            } else {
                dst.copy_from_slice(src);
            }
        }
        out
    }

    /// Causal softmax probabilities of queries `i0..i1` of a document over
    /// keys `0..i1`: `[i1 - i0, i1]` (row stride `i1`), zero above the
    /// diagonal. Only the keys a query block can see are computed.
    fn probs(&self, q: &[f32], k: &[f32], i0: usize, i1: usize) -> Vec<f32> {
        let hd = self.head_dim;
        let (m, n) = (i1 - i0, i1);
        let mut p = vec![0f32; m * n];
        // S = scale * Q[i0..i1] K[0..i1]^T
        mm(m, n, hd, &q[i0 * hd..], hd, 1, k, 1, hd, &mut p, self.scale);
        for r in 0..m {
            let i = i0 + r;
            let row = &mut p[r * n..(r + 1) * n];
            softmax(&mut row[..=i]);
            row[i + 1..].iter_mut().for_each(|x| *x = 0.0);
        }
        p
    }

    /// Output of head `h` for document `doc` of row `r`: `[n, hd]`, and
    /// the query blocks' probabilities when `keep`.
    #[allow(clippy::too_many_arguments)]
    fn forward_block(
        &self,
        x: &[f32],
        r: usize,
        h: usize,
        doc: (usize, usize),
        keep: bool,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let hd = self.head_dim;
        let (w, k0, v0) = self.widths();
        let kh = h / (self.heads / self.kv_heads);
        let n = doc.1 - doc.0;
        let qb = self.block(x, w, h * hd, r, doc, true);
        let kb = self.block(x, w, k0 + kh * hd, r, doc, true);
        let vb = self.block(x, w, v0 + kh * hd, r, doc, false);
        let mut out = vec![0f32; n * hd];
        let mut kept = Vec::new();
        for i0 in (0..n).step_by(QUERY_BLOCK) {
            let i1 = (i0 + QUERY_BLOCK).min(n);
            let p = self.probs(&qb, &kb, i0, i1);
            mm(
                i1 - i0,
                hd,
                i1,
                &p,
                i1,
                1,
                &vb,
                hd,
                1,
                &mut out[i0 * hd..],
                1.0,
            );
            if keep {
                kept.push(p);
            }
        }
        (out, kept)
    }

    /// Gradients for one (row, kv head, document): Q gradients of the heads
    /// sharing the kv head, and its K and V gradients (pre-RoPE).
    #[allow(clippy::too_many_arguments)]
    fn backward_block(
        &self,
        x: &[f32],
        g: &[f32],
        r: usize,
        kh: usize,
        doc: (usize, usize),
    ) -> BackPart {
        let hd = self.head_dim;
        let (w, k0, v0) = self.widths();
        let qw = self.heads * hd;
        let group = self.heads / self.kv_heads;
        let n = doc.1 - doc.0;
        let kb = self.block(x, w, k0 + kh * hd, r, doc, true);
        let vb = self.block(x, w, v0 + kh * hd, r, doc, false);
        let mut dkr = vec![0f32; n * hd];
        let mut dv = vec![0f32; n * hd];
        let mut dqs = Vec::with_capacity(group);
        for h in kh * group..(kh + 1) * group {
            let qb = self.block(x, w, h * hd, r, doc, true);
            let gb = self.block(g, qw, h * hd, r, doc, false);
            let mut dqr = vec![0f32; n * hd];
            let mut kept = self
                .probs
                .as_ref()
                .and_then(|c| c.lock().ok()?.remove(&(r, h, doc.0)))
                .unwrap_or_default()
                .into_iter();
            for i0 in (0..n).step_by(QUERY_BLOCK) {
                let i1 = (i0 + QUERY_BLOCK).min(n);
                let m = i1 - i0;
                let p = kept.next().unwrap_or_else(|| self.probs(&qb, &kb, i0, i1));
                // dP = dO[i0..i1] V[0..i1]^T
                let mut dp = vec![0f32; m * i1];
                mm(m, i1, hd, &gb[i0 * hd..], hd, 1, &vb, 1, hd, &mut dp, 1.0);
                // dS = P * (dP - rowsum(P * dP)) * scale, written over dP.
                for rr in 0..m {
                    let i = i0 + rr;
                    let (pr, dr) = (
                        &p[rr * i1..rr * i1 + i + 1],
                        &mut dp[rr * i1..(rr + 1) * i1],
                    );
                    let di: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                    for (d, pj) in dr.iter_mut().zip(pr) {
                        *d = pj * (*d - di) * self.scale;
                    }
                    dr[i + 1..].iter_mut().for_each(|x| *x = 0.0);
                }
                // dQ[i0..i1] = dS K[0..i1] ; dK[0..i1] += dS^T Q[i0..i1] ;
                // dV[0..i1] += P^T dO[i0..i1]
                mm(m, hd, i1, &dp, i1, 1, &kb, hd, 1, &mut dqr[i0 * hd..], 1.0);
                mm_acc(i1, hd, m, &dp, 1, i1, &qb[i0 * hd..], hd, 1, &mut dkr);
                mm_acc(i1, hd, m, &p, 1, i1, &gb[i0 * hd..], hd, 1, &mut dv);
            }
            let mut dq = vec![0f32; n * hd];
            for i in 0..n {
                let tok = r * self.layout.len + doc.0 + i;
                self.rope_back(
                    tok,
                    &dqr[i * hd..(i + 1) * hd],
                    &mut dq[i * hd..(i + 1) * hd],
                );
            }
            dqs.push(dq);
        }
        let mut dk = vec![0f32; n * hd];
        for i in 0..n {
            let tok = r * self.layout.len + doc.0 + i;
            self.rope_back(
                tok,
                &dkr[i * hd..(i + 1) * hd],
                &mut dk[i * hd..(i + 1) * hd],
            );
        }
        (dqs, dk, dv)
    }
}

/// `out[m, n] = alpha * a[m, k] b[k, n]`, row-major `out`, `a` and `b` given
/// by (row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    out: &mut [f32],
    alpha: f32,
) {
    gemm_call(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, out, alpha, false);
}

/// `out[m, n] += a[m, k] b[k, n]`.
#[allow(clippy::too_many_arguments)]
fn mm_acc(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    out: &mut [f32],
) {
    gemm_call(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, out, 1.0, true);
}

#[allow(clippy::too_many_arguments)]
fn gemm_call(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    out: &mut [f32],
    alpha: f32,
    accumulate: bool,
) {
    assert!(out.len() >= m * n);
    assert!(m == 0 || k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    assert!(k == 0 || n == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: the asserts above keep every index gemm touches inside the
    // slices; `out` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

type BackPart = (Vec<Vec<f32>>, Vec<f32>, Vec<f32>);

impl CustomOp1 for DocAttention {
    fn name(&self) -> &'static str {
        "weft-doc-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "qkv")?;
        let (b, t, hd) = (self.layout.rows, self.layout.len, self.head_dim);
        let qw = self.heads * hd;
        if x.len() != b * t * self.widths().0 {
            candle_core::bail!(
                "attention: qkv holds {} values, not {} tokens x {}",
                x.len(),
                b * t,
                self.widths().0
            );
        }
        let tasks: Vec<(usize, usize, (usize, usize))> = (0..b)
            .flat_map(|r| {
                let docs = self.documents(r);
                (0..self.heads).flat_map(move |h| docs.clone().into_iter().map(move |d| (r, h, d)))
            })
            .collect();
        // The probabilities of a document of n tokens take about
        // n * (n + QUERY_BLOCK) / 2 values per head.
        let values: usize = tasks
            .iter()
            .map(|&(_, _, (s, e))| (e - s) * (e - s + QUERY_BLOCK) / 2)
            .sum();
        let keep = self.probs.is_some() && values <= PROBS_CACHE_VALUES;
        let parts: Vec<(Vec<f32>, Vec<Vec<f32>>)> = tasks
            .par_iter()
            .map(|&(r, h, doc)| self.forward_block(x, r, h, doc, keep))
            .collect();
        let mut out = vec![0f32; b * t * qw];
        out.par_chunks_mut(t * qw)
            .enumerate()
            .for_each(|(row_index, out)| {
                for (&(r, h, (s, e)), (part, _)) in tasks.iter().zip(&parts) {
                    if r != row_index {
                        continue;
                    }
                    for i in s..e {
                        out[i * qw + h * hd..i * qw + (h + 1) * hd]
                            .copy_from_slice(&part[(i - s) * hd..(i - s + 1) * hd]);
                    }
                }
            });
        let mut cache = HashMap::new();
        if keep {
            for (&(r, h, (s, _)), (_, kept)) in tasks.iter().zip(parts) {
                cache.insert((r, h, s), kept);
            }
        }
        if let (true, Some(c)) = (keep, &self.probs) {
            if let Ok(mut c) = c.lock() {
                *c = cache;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b * t, qw))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        with_values(qkv, |x| {
            with_values(grad, |g| self.backward(x, g, grad.device()))
        })
    }
}

impl DocAttention {
    /// The gradient of the fused `qkv` input: `[rows * len, q + 2 kv]`.
    fn backward(
        &self,
        x: &[f32],
        g: &[f32],
        device: &candle_core::Device,
    ) -> Result<Option<Tensor>> {
        let (b, t, hd) = (self.layout.rows, self.layout.len, self.head_dim);
        let (w, k0, v0) = self.widths();
        let group = self.heads / self.kv_heads;
        let tasks: Vec<(usize, usize, (usize, usize))> = (0..b)
            .flat_map(|r| {
                let docs = self.documents(r);
                (0..self.kv_heads)
                    .flat_map(move |h| docs.clone().into_iter().map(move |d| (r, h, d)))
            })
            .collect();
        let parts: Vec<BackPart> = tasks
            .par_iter()
            .map(|&(r, kh, doc)| self.backward_block(x, g, r, kh, doc))
            .collect();
        let mut d = vec![0f32; b * t * w];
        d.par_chunks_mut(t * w)
            .enumerate()
            .for_each(|(row_index, d)| {
                for (&(r, kh, (s, e)), (dqs, dkp, dvp)) in tasks.iter().zip(&parts) {
                    if r != row_index {
                        continue;
                    }
                    for i in s..e {
                        let row = i * w;
                        let l = i - s;
                        d[row + k0 + kh * hd..row + k0 + (kh + 1) * hd]
                            .copy_from_slice(&dkp[l * hd..(l + 1) * hd]);
                        d[row + v0 + kh * hd..row + v0 + (kh + 1) * hd]
                            .copy_from_slice(&dvp[l * hd..(l + 1) * hd]);
                        for (gi, part) in dqs.iter().enumerate() {
                            let h = kh * group + gi;
                            d[row + h * hd..row + (h + 1) * hd]
                                .copy_from_slice(&part[l * hd..(l + 1) * hd]);
                        }
                    }
                }
            });
        Ok(Some(Tensor::from_vec(d, (b * t, w), device)?))
    }
}

const ROWS_PER_TASK: usize = 64;

/// `e^x` by range reduction and a degree-6 polynomial (Cephes' `expf`,
/// relative error about 2e-7 on [-87, 88]); branch-free and free of library
/// calls, so loops over it vectorize on every path (even without SSE4.1's
/// `roundps`, where `f32::floor` is a call to libm's `floorf`).
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds an f32 of magnitude < 2^22 to the
    // nearest integer (the default rounding mode).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2) (Cephes rounds half up; a tie only moves r to
    // the other end of [-ln 2 / 2, ln 2 / 2], where the polynomial holds).
    let fx = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - fx * 0.693_359_4 + fx * 2.121_944_4e-4;
    let mut y = 1.987_569_1e-4;
    y = y * r + 1.398_2e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    y = y * r + 5.0e-1;
    y = y * r * r + r + 1.0;
    // 2^fx: fx + 127 is an integer in [1, 254] (x is clamped), so adding
    // ROUND puts it in the low mantissa bits, and the shift moves it into
    // the exponent field. Unlike `fx as i32` (a saturating cast, one scalar
    // conversion per lane), this vectorizes.
    f32::from_bits((fx + (127.0 + ROUND)).to_bits() << 23) * y
}

/// Softmax of one row with `L` independent lanes, so the max, the
/// exponentials and the sum vectorize (a single running sum is a serial
/// dependency): 8 lanes fill an AVX2 register, 16 an AVX-512 one.
#[inline(always)]
fn softmax_lanes<const L: usize>(row: &mut [f32]) {
    let mut ml = [f32::NEG_INFINITY; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for l in 0..L {
            ml[l] = if c[l] > ml[l] { c[l] } else { ml[l] };
        }
    }
    let mut max = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for m in ml {
        max = max.max(m);
    }
    let mut sl = [0f32; L];
    let mut chunks = row.chunks_exact_mut(L);
    for c in &mut chunks {
        for l in 0..L {
            let e = exp_approx(c[l] - max);
            c[l] = e;
            sl[l] += e;
        }
    }
    let mut sum: f32 = 0.0;
    for x in chunks.into_remainder() {
        *x = exp_approx(*x - max);
        sum += *x;
    }
    sum += sl.iter().sum::<f32>();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(row: &mut [f32]) {
    softmax_lanes::<8>(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn softmax_avx512(row: &mut [f32]) {
    softmax_lanes::<16>(row)
}

/// In-place softmax of one row on the given path (the caller checked that
/// the CPU has it: [`Isa::supported`]).
fn softmax_on(isa: Isa, row: &mut [f32]) {
    match isa {
        // SAFETY: `isa` is supported (AVX2 + FMA, or AVX-512 F on top).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { softmax_avx2(row) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { softmax_avx512(row) },
        _ => softmax_lanes::<8>(row),
    }
}

/// In-place softmax of one row, on the path [`Isa::detect`] picks
/// (`WEFT_ISA` forces one).
fn softmax(row: &mut [f32]) {
    softmax_on(Isa::detect(), row)
}

/// Queries per block of causal attention: a block computes scores only for
/// the keys up to its last query.
const QUERY_BLOCK: usize = 64;

/// RMSNorm over the last dimension with a learned scale: `x [n, d]`, `w [d]`.
#[derive(Debug, Clone, Copy)]
pub struct RmsNorm {
    pub eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "weft-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1, "x")?, slice(s2, l2, "w")?);
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
                    let r = 1.0 / (dot(x, x) / d as f32 + self.eps).sqrt();
                    for i in 0..d {
                        o[i] = x[i] * r * w[i];
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        with_values(x, |xv| {
            with_values(w, |wv| {
                with_values(grad, |g| {
                    let d = wv.len();
                    let mut dx = vec![0f32; xv.len()];
                    let dws: Vec<Vec<f32>> = dx
                        .par_chunks_mut(d * ROWS_PER_TASK)
                        .zip(
                            xv.par_chunks(d * ROWS_PER_TASK)
                                .zip(g.par_chunks(d * ROWS_PER_TASK)),
                        )
                        .map(|(dx, (x, g))| {
                            let mut dw = vec![0f32; d];
                            for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                                let r = 1.0 / (dot(x, x) / d as f32 + self.eps).sqrt();
                                let mut s = 0f32;
                                for i in 0..d {
                                    dw[i] += g[i] * x[i] * r;
                                    s += g[i] * wv[i] * x[i];
                                }
                                let c = r * r * r * s / d as f32;
                                for i in 0..d {
                                    dx[i] = r * g[i] * wv[i] - x[i] * c;
                                }
                            }
                            dw
                        })
                        .collect();
                    let mut dw = vec![0f32; d];
                    for part in dws {
                        axpy(&mut dw, 1.0, &part);
                    }
                    Ok((
                        Some(Tensor::from_vec(dx, x.shape(), x.device())?),
                        Some(Tensor::from_vec(dw, d, w.device())?),
                    ))
                })
            })
        })
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_approx(-x))
}

/// `silu(gate) * up`, elementwise, of one fused projection
/// `gate_up [n, 2f]`: each row holds its `f` gate values, then its `f` up
/// values, as `x W^T` gives them for `W` the gate and up weights stacked by
/// rows (one matmul instead of two). Output `[n, f]`.
#[derive(Debug, Clone, Copy)]
pub struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "weft-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "gate_up")?;
        let (n, f2) = l1.shape().dims2()?;
        if f2 % 2 != 0 {
            candle_core::bail!("swiglu: gate_up has an odd width {f2}");
        }
        let f = f2 / 2;
        let mut out = vec![0f32; n * f];
        out.par_chunks_mut(f)
            .zip(x.par_chunks(f2))
            .for_each(|(o, row)| {
                let (a, b) = row.split_at(f);
                for i in 0..f {
                    o[i] = a[i] * sigmoid(a[i]) * b[i];
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, f))))
    }

    fn bwd(&self, gate_up: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        with_values(gate_up, |x| {
            with_values(grad, |g| {
                let (n, f2) = gate_up.dims2()?;
                let f = f2 / 2;
                let mut d = vec![0f32; n * f2];
                d.par_chunks_mut(f2)
                    .zip(x.par_chunks(f2).zip(g.par_chunks(f)))
                    .for_each(|(d, (row, g))| {
                        let (a, b) = row.split_at(f);
                        let (da, db) = d.split_at_mut(f);
                        for i in 0..f {
                            let s = sigmoid(a[i]);
                            db[i] = g[i] * a[i] * s;
                            da[i] = g[i] * b[i] * s * (1.0 + a[i] * (1.0 - s));
                        }
                    });
                Ok(Some(Tensor::from_vec(d, (n, f2), gate_up.device())?))
            })
        })
    }
}

/// Weighted mean cross-entropy of `logits [n, vocab]` against `target`:
/// `-sum_i w_i log softmax(logits_i)[target_i] / sum_i w_i`, a scalar.
#[derive(Debug, Clone)]
pub struct CrossEntropy {
    pub target: Arc<Vec<u32>>,
    pub weight: Arc<Vec<f32>>,
}

impl CrossEntropy {
    fn total_weight(&self) -> f32 {
        self.weight.iter().sum::<f32>().max(f32::MIN_POSITIVE)
    }
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + row.iter().map(|&x| exp_approx(x - max)).sum::<f32>().ln()
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "weft-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "logits")?;
        let n = self.target.len();
        if n == 0 || x.len() % n != 0 {
            candle_core::bail!("cross-entropy: {} logits for {n} targets", x.len());
        }
        let v = x.len() / n;
        let sum: f64 = x
            .par_chunks(v)
            .enumerate()
            .map(|(i, row)| {
                let w = self.weight[i];
                if w == 0.0 {
                    return 0.0;
                }
                let t = self.target[i] as usize;
                (w * (log_sum_exp(row) - row[t.min(v - 1)])) as f64
            })
            .sum();
        let loss = (sum / self.total_weight() as f64) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        with_values(logits, |x| {
            let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
            let n = self.target.len();
            let v = x.len() / n;
            let scale = g / self.total_weight();
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(v)
                .zip(x.par_chunks(v))
                .enumerate()
                .for_each(|(i, (d, row))| {
                    let w = self.weight[i];
                    if w == 0.0 {
                        return;
                    }
                    let lse = log_sum_exp(row);
                    for j in 0..v {
                        d[j] = exp_approx(row[j] - lse) * w * scale;
                    }
                    d[(self.target[i] as usize).min(v - 1)] -= w * scale;
                });
            Ok(Some(Tensor::from_vec(dx, logits.shape(), logits.device())?))
        })
    }
}

/// The clipped surrogate loss of PPO (Schulman et al. 2017) as GRPO uses it
/// (Shao et al. 2024, DeepSeekMath), over `logits [n, vocab]`, a scalar:
///
/// `L = -(1/normalizer) * sum_i [min(r_i A_i, clip(r_i, 1-eps, 1+eps) A_i)
///      - kl_coef * KL_i]`
///
/// over the rows with `advantage[i]` set (`Some`), where `lp_i = log
/// softmax(logits_i)[target_i]`, `r_i = exp(lp_i - old_logp_i)` (1 where
/// `old_logp` is `None`: the rollouts came from these very weights, one
/// update per batch), and `KL_i` is the k3 estimator of KL(pi || ref)
/// (Schulman 2020): `exp(ref_i - lp_i) - (ref_i - lp_i) - 1` (0 where
/// `ref_logp` is `None`). Its gradient is the policy gradient
/// `-A_i r_i grad lp_i` where the ratio is inside the clip range (or
/// outside it on the side that lowers the objective), 0 where clipped.
#[derive(Debug, Clone)]
pub struct PolicyLoss {
    pub target: Arc<Vec<u32>>,
    /// Per row: the advantage of a sampled token; `None` for rows that do
    /// not count (prompts, engine-written text, padding).
    pub advantage: Arc<Vec<Option<f32>>>,
    pub old_logp: Option<Arc<Vec<f32>>>,
    pub ref_logp: Option<Arc<Vec<f32>>>,
    pub clip_eps: f32,
    pub kl_coef: f32,
    /// What the sum is divided by (the batch's sampled tokens: every token
    /// weighs the same, DAPO's token-level mean).
    pub normalizer: f32,
    /// The sampling temperature of the rollouts: log-probabilities are of
    /// `softmax(logits / temperature)`, the distribution the tokens were
    /// drawn from (as TRL and verl compute them); 1.0 for none.
    pub temperature: f32,
}

impl PolicyLoss {
    /// Per counted row: (objective term, d objective / d lp).
    fn term(&self, i: usize, lp: f32) -> Option<(f32, f32)> {
        let a = self.advantage[i]?;
        let r = match &self.old_logp {
            Some(old) => (lp - old[i]).exp(),
            None => 1.0,
        };
        let lo = 1.0 - self.clip_eps;
        let hi = 1.0 + self.clip_eps;
        let clipped = r.clamp(lo, hi);
        let (surrogate, d_surrogate) = if r * a <= clipped * a {
            (r * a, r * a)
        } else {
            (clipped * a, 0.0)
        };
        let (kl, d_kl) = match (&self.ref_logp, self.kl_coef) {
            (Some(reference), c) if c != 0.0 => {
                let d = reference[i] - lp;
                // d/dlp [exp(ref - lp) - (ref - lp) - 1] = -exp(ref - lp) + 1
                (d.exp() - d - 1.0, 1.0 - d.exp())
            }
            _ => (0.0, 0.0),
        };
        Some((
            surrogate - self.kl_coef * kl,
            d_surrogate - self.kl_coef * d_kl,
        ))
    }
}

impl CustomOp1 for PolicyLoss {
    fn name(&self) -> &'static str {
        "weft-policy-loss"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "logits")?;
        let n = self.target.len();
        if n == 0 || x.len() % n != 0 || self.advantage.len() != n {
            candle_core::bail!("policy loss: {} logits for {n} targets", x.len());
        }
        let v = x.len() / n;
        let sum: f64 = x
            .par_chunks(v)
            .enumerate()
            .map(|(i, row)| {
                if self.advantage[i].is_none() {
                    return 0.0;
                }
                let lp = tempered_logprob(row, self.target[i], self.temperature);
                self.term(i, lp).map_or(0.0, |(obj, _)| obj as f64)
            })
            .sum();
        let loss = (-sum / self.normalizer.max(f32::MIN_POSITIVE) as f64) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        with_values(logits, |x| {
            let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
            let n = self.target.len();
            let v = x.len() / n;
            let scale = -g / self.normalizer.max(f32::MIN_POSITIVE);
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(v)
                .zip(x.par_chunks(v))
                .enumerate()
                .for_each(|(i, (d, row))| {
                    if self.advantage[i].is_none() {
                        return;
                    }
                    let t = (self.target[i] as usize).min(v - 1);
                    let inv = 1.0 / self.temperature;
                    let lse = log_sum_exp_scaled(row, inv);
                    let Some((_, d_lp)) = self.term(i, row[t] * inv - lse) else {
                        return;
                    };
                    if d_lp == 0.0 {
                        return;
                    }
                    // d lp / d logits_j = ([j == t] - softmax(logits / T)_j) / T
                    let c = scale * d_lp * inv;
                    for j in 0..v {
                        d[j] = -(row[j] * inv - lse).exp() * c;
                    }
                    d[t] += c;
                });
            Ok(Some(Tensor::from_vec(dx, logits.shape(), logits.device())?))
        })
    }
}

fn log_sum_exp_scaled(row: &[f32], scale: f32) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) * scale;
    max + row
        .iter()
        .map(|x| (x * scale - max).exp())
        .sum::<f32>()
        .ln()
}

/// `log softmax(row / temperature)[target]`.
fn tempered_logprob(row: &[f32], target: u32, temperature: f32) -> f32 {
    let inv = 1.0 / temperature;
    let t = (target as usize).min(row.len() - 1);
    row[t] * inv - log_sum_exp_scaled(row, inv)
}

/// `log softmax(logits_i / temperature)[target_i]` of every row of `logits
/// [n, vocab]` (no gradient): the old policy's log-probabilities of a
/// batch, of the distribution its tokens were sampled from.
pub fn token_logprobs(logits: &Tensor, target: &[u32], temperature: f32) -> Result<Vec<f32>> {
    with_values(logits, |x| {
        let n = target.len();
        if n == 0 || x.len() % n != 0 {
            candle_core::bail!("token log-probs: {} logits for {n} targets", x.len());
        }
        let v = x.len() / n;
        Ok(x.par_chunks(v)
            .zip(target.par_iter())
            .map(|(row, &t)| tempered_logprob(row, t, temperature))
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn rand_var(rng: &mut StdRng, dims: &[usize]) -> Var {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        Var::from_tensor(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap()).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Attention, RoPE and GQA written with candle's differentiable ops on a
    /// full masked score matrix.
    #[test]
    fn doc_attention_matches_reference_with_gradients() {
        // Row 0: documents [0,3) and [3,7); row 1: one document.
        let starts: Vec<u32> = vec![0, 0, 0, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 0];
        check_attention(2, 7, 4, 2, 8, starts);
    }

    #[test]
    fn doc_attention_spanning_several_query_blocks() {
        // Row 0: documents [0,70) and [70,150); row 1: one document of 150
        // (three query blocks).
        let t = 150;
        let mut starts: Vec<u32> = (0..t).map(|i| if i < 70 { 0 } else { 70 }).collect();
        starts.extend(std::iter::repeat_n(0, t));
        check_attention(2, t, 2, 1, 8, starts);
    }

    fn check_attention(b: usize, t: usize, h: usize, kvh: usize, hd: usize, starts: Vec<u32>) {
        let mut rng = StdRng::seed_from_u64(7);
        let half = hd / 2;
        let pos: Vec<usize> = (0..b * t).map(|i| i % t - starts[i] as usize).collect();
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for &p in &pos {
            for i in 0..half {
                let a = p as f32 / 10000f32.powf(2.0 * i as f32 / hd as f32);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let q = rand_var(&mut rng, &[b * t, h * hd]);
        let k = rand_var(&mut rng, &[b * t, kvh * hd]);
        let v = rand_var(&mut rng, &[b * t, kvh * hd]);
        let op = DocAttention {
            layout: RowLayout {
                rows: b,
                len: t,
                doc_start: Arc::new(starts.clone()),
                cos: Arc::new(cos.clone()),
                sin: Arc::new(sin.clone()),
            },
            heads: h,
            kv_heads: kvh,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            probs: None,
        };
        let dev = Device::Cpu;
        // Without a cache (the backward pass recomputes the probabilities)
        // and with one: the same gradients, to the bit.
        let cache = ProbsCache::default();
        let cached = DocAttention {
            probs: Some(cache.clone()),
            ..op.clone()
        };
        // The op takes q, k and v side by side in one row.
        let qkv = Tensor::cat(&[q.as_tensor(), k.as_tensor(), v.as_tensor()], 1).unwrap();
        let out = qkv.apply_op1(op).unwrap();
        let out_cached = qkv.apply_op1(cached).unwrap();
        assert_eq!(max_diff(&out, &out_cached), 0.0);
        assert!(
            !cache.lock().unwrap().is_empty(),
            "the forward kept nothing"
        );
        let w = Tensor::from_vec(
            (0..out.elem_count())
                .map(|i| (i % 13) as f32 * 0.1)
                .collect::<Vec<f32>>(),
            out.shape(),
            &dev,
        )
        .unwrap();
        let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let cgrads = (&out_cached * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(cache.lock().unwrap().is_empty(), "the backward left some");
        for var in [&q, &k, &v] {
            let (a, c) = (
                grads.get(var.as_tensor()).unwrap(),
                cgrads.get(var.as_tensor()).unwrap(),
            );
            assert_eq!(max_diff(a, c), 0.0, "cached probabilities, other gradients");
        }

        // Reference.
        let cos_t = Tensor::from_vec(cos, (b, 1, t, half), &dev).unwrap();
        let sin_t = Tensor::from_vec(sin, (b, 1, t, half), &dev).unwrap();
        let rope = |x: &Tensor| {
            let x1 = x.narrow(D::Minus1, 0, half).unwrap();
            let x2 = x.narrow(D::Minus1, half, half).unwrap();
            let a =
                (x1.broadcast_mul(&cos_t).unwrap() - x2.broadcast_mul(&sin_t).unwrap()).unwrap();
            let c =
                (x2.broadcast_mul(&cos_t).unwrap() + x1.broadcast_mul(&sin_t).unwrap()).unwrap();
            Tensor::cat(&[a, c], D::Minus1).unwrap()
        };
        let split = |x: &Tensor, n: usize| {
            x.reshape((b, t, n, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let qr = rope(&split(q.as_tensor(), h));
        let kr = rope(&split(k.as_tensor(), kvh));
        let vr = split(v.as_tensor(), kvh);
        let rep = |x: Tensor| {
            x.unsqueeze(2)
                .unwrap()
                .broadcast_as((b, kvh, h / kvh, t, hd))
                .unwrap()
                .reshape((b, h, t, hd))
                .unwrap()
        };
        let (kr, vr) = (rep(kr), rep(vr));
        let mut mask = vec![f32::NEG_INFINITY; b * t * t];
        for r in 0..b {
            for i in 0..t {
                for j in 0..=i {
                    if starts[r * t + j] == starts[r * t + i] {
                        mask[(r * t + i) * t + j] = 0.0;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, t, t), &dev).unwrap();
        let s = (qr.matmul(&kr.t().unwrap()).unwrap() * (1.0 / (hd as f64).sqrt()))
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        let reference = p
            .matmul(&vr)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b * t, h * hd))
            .unwrap();
        assert!(
            max_diff(&out, &reference) < 1e-5,
            "forward {}",
            max_diff(&out, &reference)
        );
        let rgrads = (&reference * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for var in [&q, &k, &v] {
            let a = grads.get(var.as_tensor()).unwrap();
            let r = rgrads.get(var.as_tensor()).unwrap();
            assert!(max_diff(a, r) < 1e-4, "grad diff {}", max_diff(a, r));
        }
    }

    #[test]
    fn exp_approx_is_accurate() {
        let mut worst = 0f32;
        for i in 0..=400_000 {
            let x = -87.0 + i as f32 * (87.0 + 88.0) / 400_000.0;
            let (a, b) = (exp_approx(x), x.exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 1e-6, "relative error {worst}");
        // Outside the range: clamped, finite, never NaN from a finite input.
        assert_eq!(exp_approx(-1e30), exp_approx(-87.0));
        assert!(exp_approx(1e30).is_finite() && exp_approx(1e30) > 1e38);
        assert_eq!(exp_approx(f32::NEG_INFINITY), exp_approx(-87.0));
    }

    /// Every softmax path this CPU has, on rows of every length around the
    /// lane counts, against the textbook formula in f64.
    #[test]
    fn softmax_paths_match_the_formula() {
        let mut rng = StdRng::seed_from_u64(7);
        let paths: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
        for isa in paths {
            for n in (1..70).chain([127, 128, 129, 1000]) {
                let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-30.0..30.0f32)).collect();
                let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let z: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
                let mut row = x.clone();
                softmax_on(isa, &mut row);
                for (a, &v) in row.iter().zip(&x) {
                    let want = (v as f64 - max).exp() / z;
                    assert!(
                        (*a as f64 - want).abs() < 1e-6 * want.max(1e-3),
                        "{isa:?}, n {n}: {a} against {want}"
                    );
                }
            }
        }
    }

    /// The policy loss and its gradient against the same formula written
    /// with candle's differentiable ops, with ratios inside and outside the
    /// clip range, both signs of advantage, and a KL term.
    #[test]
    fn policy_loss_matches_reference() {
        let mut rng = StdRng::seed_from_u64(5);
        let dev = Device::Cpu;
        let (n, v) = (60, 12);
        let x = rand_var(&mut rng, &[n, v]);
        let target: Vec<u32> = (0..n).map(|i| (i * 5 % v) as u32).collect();
        let advantage: Vec<Option<f32>> = (0..n)
            .map(|i| (i % 7 != 0).then(|| rng.gen_range(-1.0..1.0)))
            .collect();
        // Rollouts sampled at 0.7: every log-probability is of logits / 0.7.
        let temp = 0.7f32;
        let lp_now = token_logprobs(x.as_tensor(), &target, temp).unwrap();
        // Old log-probs off by up to ±0.5: many ratios leave [0.8, 1.2].
        let old: Vec<f32> = lp_now
            .iter()
            .map(|l| l + rng.gen_range(-0.5..0.5))
            .collect();
        let reference_lp: Vec<f32> = lp_now
            .iter()
            .map(|l| l + rng.gen_range(-0.3..0.3))
            .collect();
        let (eps, beta, norm) = (0.2f32, 0.05f32, 40.0f32);
        let fused = x
            .as_tensor()
            .apply_op1(PolicyLoss {
                target: Arc::new(target.clone()),
                advantage: Arc::new(advantage.clone()),
                old_logp: Some(Arc::new(old.clone())),
                ref_logp: Some(Arc::new(reference_lp.clone())),
                clip_eps: eps,
                kl_coef: beta,
                normalizer: norm,
                temperature: temp,
            })
            .unwrap();
        let reference = {
            let scaled = (x.as_tensor() / temp as f64).unwrap();
            let lp = candle_nn::ops::log_softmax(&scaled, D::Minus1).unwrap();
            let t = Tensor::from_vec(target, (n, 1), &dev).unwrap();
            let lp = lp.gather(&t, 1).unwrap().flatten_all().unwrap();
            let col = |v: Vec<f32>| Tensor::from_vec(v, n, &dev).unwrap();
            let a = col(advantage.iter().map(|a| a.unwrap_or(0.0)).collect());
            let mask = col(advantage.iter().map(|a| a.map_or(0.0, |_| 1.0)).collect());
            let r = (&lp - col(old)).unwrap().exp().unwrap();
            let unclipped = (&r * &a).unwrap();
            let clipped = (r.clamp(1.0 - eps, 1.0 + eps).unwrap() * &a).unwrap();
            let surrogate = unclipped.minimum(&clipped).unwrap();
            let d = (col(reference_lp) - &lp).unwrap();
            let kl = ((d.exp().unwrap() - &d).unwrap() - 1.0).unwrap();
            let obj = (surrogate - (kl * beta as f64).unwrap()).unwrap();
            ((obj * mask).unwrap().sum_all().unwrap() * (-1.0 / norm as f64)).unwrap()
        };
        assert!(max_diff(&fused, &reference) < 1e-5);
        let g1 = fused.backward().unwrap();
        let g2 = reference.backward().unwrap();
        let d = max_diff(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert!(d < 1e-5, "grad diff {d}");

        // On-policy (no old log-probs): the gradient of -sum(A lp) / n, the
        // policy gradient.
        let pg = x
            .as_tensor()
            .apply_op1(PolicyLoss {
                target: Arc::new((0..n).map(|i| (i * 5 % v) as u32).collect()),
                advantage: Arc::new(advantage.clone()),
                old_logp: None,
                ref_logp: None,
                clip_eps: eps,
                kl_coef: 0.0,
                normalizer: norm,
                temperature: 1.0,
            })
            .unwrap();
        let lp = candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1).unwrap();
        let t = Tensor::from_vec(
            (0..n).map(|i| (i * 5 % v) as u32).collect::<Vec<_>>(),
            (n, 1),
            &dev,
        )
        .unwrap();
        let a = Tensor::from_vec(
            advantage
                .iter()
                .map(|a| a.unwrap_or(0.0))
                .collect::<Vec<_>>(),
            (n, 1),
            &dev,
        )
        .unwrap();
        let want = ((lp.gather(&t, 1).unwrap() * a).unwrap().sum_all().unwrap()
            * (-1.0 / norm as f64))
            .unwrap();
        // Its value is -sum(A) / normalizer (every ratio is 1); its gradient
        // is that of the policy-gradient loss.
        let sum_a: f32 = advantage.iter().flatten().sum();
        assert!((pg.to_scalar::<f32>().unwrap() + sum_a / norm).abs() < 1e-5);
        let d = max_diff(
            pg.backward().unwrap().get(x.as_tensor()).unwrap(),
            want.backward().unwrap().get(x.as_tensor()).unwrap(),
        );
        assert!(d < 1e-5, "grad diff {d}");
    }

    #[test]
    fn rms_norm_swiglu_cross_entropy_match_reference() {
        let mut rng = StdRng::seed_from_u64(3);
        let dev = Device::Cpu;
        let x = rand_var(&mut rng, &[70, 16]);
        let w = rand_var(&mut rng, &[16]);
        let u = rand_var(&mut rng, &[70, 16]);
        let target: Vec<u32> = (0..70).map(|i| (i * 7 % 16) as u32).collect();
        let weight: Vec<f32> = (0..70)
            .map(|i| if i % 5 == 0 { 0.0 } else { 1.0 })
            .collect();

        let fused = {
            let n = x
                .as_tensor()
                .apply_op2(w.as_tensor(), RmsNorm { eps: 1e-5 })
                .unwrap();
            // The fused op takes gate and up side by side in one row.
            let a = Tensor::cat(&[&n, u.as_tensor()], 1)
                .unwrap()
                .apply_op1(SwiGlu)
                .unwrap();
            a.apply_op1(CrossEntropy {
                target: Arc::new(target.clone()),
                weight: Arc::new(weight.clone()),
            })
            .unwrap()
        };
        let reference = {
            let xs = x.as_tensor();
            let ms = xs.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let n = xs
                .broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(w.as_tensor())
                .unwrap();
            let a = (n.silu().unwrap() * u.as_tensor()).unwrap();
            let lp = candle_nn::ops::log_softmax(&a, D::Minus1).unwrap();
            let t = Tensor::from_vec(target, (70, 1), &dev).unwrap();
            let wt = Tensor::from_vec(weight.clone(), (70, 1), &dev).unwrap();
            let total: f32 = weight.iter().sum();
            ((lp.gather(&t, 1).unwrap() * wt).unwrap().sum_all().unwrap() * (-1.0 / total as f64))
                .unwrap()
        };
        assert!(max_diff(&fused, &reference) < 1e-5);
        let g1 = fused.backward().unwrap();
        let g2 = reference.backward().unwrap();
        for var in [&x, &w, &u] {
            let d = max_diff(
                g1.get(var.as_tensor()).unwrap(),
                g2.get(var.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "grad diff {d}");
        }
    }
}
