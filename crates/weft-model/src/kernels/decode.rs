//! Attention of one decode token over a long context, split along the
//! context ("flash-decoding"): each part of the context gives every query
//! head of one KV group a partial softmax state, and the parts are merged.
//!
//! A decode step of one sequence has only as many independent pieces of
//! attention work as it has query heads; with grouped-query attention the
//! heads of a group also read the same K and V rows. Here each K and V row
//! is converted from f16 once for the whole group, the softmax's
//! exponentials are computed eight at a time, and the context is cut into
//! parts so the cores share the work evenly. The result differs from the
//! one-pass softmax only by rounding, so the forward pass uses it only past
//! [`SPLIT_MIN`] context slots, the same for a sequence alone or in a batch.

use half::f16;

use super::Isa;

/// Decode steps over at least this many context slots take the split path.
pub const SPLIT_MIN: usize = 256;

static SPLIT_STEPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many (sequence, layer) decode attentions took the split path in
/// this process so far: lets tests check which path ran, since a different
/// summation order does not always change the logits (8-bit activations
/// often round both results to the same values).
pub fn split_steps() -> usize {
    SPLIT_STEPS.load(std::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn count_split_step() {
    SPLIT_STEPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Fewest slots in one part.
pub const PART_MIN: usize = 64;

/// Head sizes the split path handles (multiples of 16 up to 128).
pub fn supports(head_dim: usize) -> bool {
    head_dim.is_multiple_of(16) && head_dim <= 128
}

/// One group's partial state over a slice of the context: per head the
/// running max, the sum of exponentials, and the unnormalised output.
#[derive(Debug)]
pub struct Partial<'a> {
    pub max: &'a mut [f32],
    pub sum: &'a mut [f32],
    /// `heads * head_dim` values.
    pub out: &'a mut [f32],
}

/// Floats one group's [`Partial`] takes in a flat buffer.
pub fn partial_len(heads: usize, head_dim: usize) -> usize {
    heads * (head_dim + 2)
}

/// Splits a flat buffer of [`partial_len`] floats into a [`Partial`].
pub fn partial(buf: &mut [f32], heads: usize) -> Partial<'_> {
    let (max, rest) = buf.split_at_mut(heads);
    let (sum, out) = rest.split_at_mut(heads);
    Partial { max, sum, out }
}

/// Attends the query heads `qs` (each `head_dim` long; they share one KV
/// head) over the K/V rows at `slots` (row `s` starts at `s * stride + col`
/// in `k` and `v`), with `scale` applied to the scores, into `p`. Rows out
/// of range fall back to bounds-checked loops that panic (engine bugs,
/// never input).
#[allow(clippy::too_many_arguments)]
pub fn attend_group(
    qs: &[&[f32]],
    k: &[f16],
    v: &[f16],
    slots: &[usize],
    stride: usize,
    col: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    p: Partial,
) {
    let (heads, n) = (qs.len(), slots.len());
    let hd = qs.first().map_or(0, |q| q.len());
    scores.clear();
    scores.resize(heads * n, 0.0);
    let in_bounds = slots
        .iter()
        .max()
        .is_none_or(|&s| s * stride + col + hd <= k.len().min(v.len()));
    let simd = cfg!(target_arch = "x86_64") && Isa::detect().has_avx2() && in_bounds;
    #[cfg(target_arch = "x86_64")]
    if simd && supports(hd) {
        // SAFETY: AVX2/FMA/F16C checked; every row is in bounds (above).
        unsafe { super::avx2::group_scores(qs, k, slots, stride, col, scale, scores) };
    }
    if !(simd && supports(hd)) {
        for (h, q) in qs.iter().enumerate() {
            for (j, &s) in slots.iter().enumerate() {
                let row = &k[s * stride + col..s * stride + col + hd];
                scores[h * n + j] = super::dot_f16(q, row) * scale;
            }
        }
    }
    for h in 0..heads {
        let row = &mut scores[h * n..(h + 1) * n];
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        p.max[h] = m;
        p.sum[h] = exp_shifted(row, m);
    }
    p.out.fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if simd && supports(hd) {
        // SAFETY: as above.
        unsafe { super::avx2::group_weighted_sum(p.out, hd, scores, v, slots, stride, col) };
        return;
    }
    for h in 0..heads {
        let o = &mut p.out[h * hd..(h + 1) * hd];
        for (j, &s) in slots.iter().enumerate() {
            super::axpy_f16(
                o,
                scores[h * n + j],
                &v[s * stride + col..s * stride + col + hd],
            );
        }
    }
}

/// Merges the parts of one group (online softmax) and writes each head's
/// normalised output to `out[h]`.
pub fn merge_parts(parts: &[Partial], hd: usize, out: &mut [&mut [f32]]) {
    // (`Partial` borrows; a merge only reads it.)
    for (h, o) in out.iter_mut().enumerate() {
        let m = parts
            .iter()
            .map(|p| p.max[h])
            .fold(f32::NEG_INFINITY, f32::max);
        o.fill(0.0);
        let mut sum = 0.0;
        for p in parts {
            let w = if p.max[h] == f32::NEG_INFINITY {
                0.0
            } else {
                (p.max[h] - m).exp()
            };
            sum += p.sum[h] * w;
            for (o, x) in o.iter_mut().zip(&p.out[h * hd..(h + 1) * hd]) {
                *o += x * w;
            }
        }
        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        o.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Constants of [`exp_shifted`]'s polynomial: the single-precision `expf`
/// of ARM's optimized-routines, as ggml's `ggml_v_expf` uses it (about 1 ulp
/// on the range a softmax needs).
pub(crate) mod expf {
    pub const SHIFT: f32 = 12582912.0; // 0x1.8p23
    pub const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b);
    pub const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
    pub const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
    pub const C0: f32 = f32::from_bits(0x3c07_2010);
    pub const C1: f32 = f32::from_bits(0x3d2b_9f17);
    pub const C2: f32 = f32::from_bits(0x3e2a_af33);
    pub const C3: f32 = f32::from_bits(0x3eff_fedb);
    pub const C4: f32 = f32::from_bits(0x3f7f_fff6);
    /// Below this `exp` is under the smallest normal f32: the result is 0.
    pub const MIN: f32 = -87.0;

    /// One value, with exactly the vector path's operations.
    #[inline]
    pub fn scalar(x: f32) -> f32 {
        if x.is_nan() {
            return x;
        }
        if x < MIN {
            return 0.0;
        }
        let z = x.mul_add(LOG2E, SHIFT);
        let n = z - SHIFT;
        let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
        let k = f32::from_bits(z.to_bits().wrapping_shl(23).wrapping_add(1.0f32.to_bits()));
        let u = b * b;
        let j = C0
            .mul_add(b, C1)
            .mul_add(u, C2.mul_add(b, C3))
            .mul_add(u, C4 * b);
        j.mul_add(k, k)
    }
}

/// `x[i] = exp(x[i] - max)`, eight at a time where the CPU allows (the same
/// bits on every path); returns the sum, added in order.
pub fn exp_shifted(x: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked by `Isa::detect`).
        unsafe { super::avx2::exp_shifted(x, max) };
        return x.iter().sum();
    }
    for v in x.iter_mut() {
        *v = expf::scalar(*v - max);
    }
    x.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_the_same_on_every_path() {
        let xs: Vec<f32> = (0..20_000)
            .map(|i| -90.0 + i as f32 * 0.0045)
            .chain([0.0, -0.0, f32::NEG_INFINITY, -1e-30])
            .collect();
        let mut v = xs.clone();
        exp_shifted(&mut v, 0.0);
        for (&x, &got) in xs.iter().zip(&v) {
            assert_eq!(got.to_bits(), expf::scalar(x).to_bits(), "x = {x}");
            let want = x.exp();
            if x < expf::MIN {
                assert_eq!(got, 0.0);
            } else {
                let ulp = (want.to_bits() as i64 - got.to_bits() as i64).abs();
                assert!(ulp <= 2, "x = {x}: {got} vs {want} ({ulp} ulp)");
            }
        }
        assert!(expf::scalar(f32::NAN).is_nan());
    }

    /// Split into parts and merged, or in one part: the same attention as
    /// the one-row primitives, to rounding, for GQA groups of 1 to 7 heads.
    #[test]
    fn split_attention_matches_the_direct_softmax() {
        for (hd, heads) in [(64, 3), (32, 1), (128, 7), (16, 2), (48, 4), (40, 2)] {
            let stride = 2 * hd + 8;
            let rows = 300;
            let k: Vec<f16> = (0..stride * rows)
                .map(|i| f16::from_f32(((i * 7 % 29) as f32 - 14.0) * 0.07))
                .collect();
            let v: Vec<f16> = (0..stride * rows)
                .map(|i| f16::from_f32(((i * 11 % 31) as f32 - 15.0) * 0.05))
                .collect();
            let qs: Vec<Vec<f32>> = (0..heads)
                .map(|h| {
                    (0..hd)
                        .map(|i| ((i * 3 + h * 5) % 17) as f32 * 0.03 - 0.2)
                        .collect()
                })
                .collect();
            let q_refs: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
            let slots: Vec<usize> = (0..rows).map(|i| (i * 37) % rows).collect();
            let (col, scale) = (hd, 0.125);
            let mut scratch = Vec::new();
            let chunks: Vec<&[usize]> = slots.chunks(70).collect();
            let mut buf = vec![0f32; chunks.len() * partial_len(heads, hd)];
            for (part, b) in chunks.iter().zip(buf.chunks_mut(partial_len(heads, hd))) {
                let p = partial(b, heads);
                attend_group(&q_refs, &k, &v, part, stride, col, scale, &mut scratch, p);
            }
            let parts: Vec<Partial> = buf
                .chunks_mut(partial_len(heads, hd))
                .map(|b| partial(b, heads))
                .collect();
            let mut got = vec![vec![0f32; hd]; heads];
            let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|o| o.as_mut_slice()).collect();
            merge_parts(&parts, hd, &mut outs);
            for (h, q) in qs.iter().enumerate() {
                let s: Vec<f32> = slots
                    .iter()
                    .map(|&sl| super::super::dot_f16(q, &k[sl * stride + col..][..hd]) * scale)
                    .collect();
                let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let total: f32 = e.iter().sum();
                let mut want = vec![0f32; hd];
                for (&p, &sl) in e.iter().zip(&slots) {
                    super::super::axpy_f16(&mut want, p / total, &v[sl * stride + col..][..hd]);
                }
                for (a, b) in got[h].iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "hd={hd} heads={heads}: {a} vs {b}");
                }
            }
        }
    }
}
