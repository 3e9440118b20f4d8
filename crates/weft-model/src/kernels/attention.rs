//! Vector routines over f16 KV rows: dot products and scaled accumulation.

use half::f16;

use super::Isa;

/// `sum(q[i] * k[i])` where `k` is stored as f16.
#[inline]
pub fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
    debug_assert_eq!(q.len(), k.len());
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().has_avx2() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked by `Isa::detect`).
        return unsafe { super::avx2::dot_f16(q, k) };
    }
    q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum()
}

/// `out[i] += p * v[i]` where `v` is stored as f16.
#[inline]
pub fn axpy_f16(out: &mut [f32], p: f32, v: &[f16]) {
    debug_assert_eq!(out.len(), v.len());
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().has_avx2() {
        // SAFETY: as above.
        unsafe { super::avx2::axpy_f16(out, p, v) };
        return;
    }
    for (o, x) in out.iter_mut().zip(v) {
        *o += p * x.to_f32();
    }
}

/// One query's scores over the f16 key rows at `slots` (row `s` starts at
/// `s * stride + col`): `out[j] = scale * q . k_j`.
pub fn scores_f16(
    q: &[f32],
    k: &[f16],
    slots: &[usize],
    stride: usize,
    col: usize,
    scale: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().has_avx2() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked by `Isa::detect`).
        unsafe { super::avx2::scores_f16(q, k, slots, stride, col, scale, out) };
        return;
    }
    let hd = q.len();
    for (o, &s) in out.iter_mut().zip(slots) {
        let row = &k[s * stride + col..s * stride + col + hd];
        *o = q.iter().zip(row).map(|(a, b)| a * b.to_f32()).sum::<f32>() * scale;
    }
}

/// `out += sum_j p[j] * v_j` over the f16 value rows at `slots`.
pub fn weighted_sum_f16(
    out: &mut [f32],
    p: &[f32],
    v: &[f16],
    slots: &[usize],
    stride: usize,
    col: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().has_avx2() {
        // SAFETY: as above.
        unsafe { super::avx2::weighted_sum_f16(out, p, v, slots, stride, col) };
        return;
    }
    let hd = out.len();
    for (&pj, &s) in p.iter().zip(slots) {
        for (o, x) in out
            .iter_mut()
            .zip(&v[s * stride + col..s * stride + col + hd])
        {
            *o += pj * x.to_f32();
        }
    }
}

/// Gathers the f16 rows `src[s * stride + col..][..hd]` for each `s` in
/// `slots` into `dst` (`slots.len() x hd` f32, row-major), converting
/// exactly; one call for many rows.
///
/// # Panics
/// When a row lies outside `src` or `dst` is too short.
pub fn gather_f16_rows(
    src: &[f16],
    slots: &[usize],
    stride: usize,
    col: usize,
    hd: usize,
    dst: &mut [f32],
) {
    assert!(dst.len() >= slots.len() * hd, "gather destination");
    let in_bounds = slots
        .iter()
        .max()
        .is_none_or(|&s| s * stride + col + hd <= src.len());
    assert!(in_bounds, "gathered row outside the KV cache");
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().has_avx2() {
        // SAFETY: the CPU supports AVX2 and F16C; every row is in bounds.
        unsafe { super::avx2::gather_f16_rows(src, slots, stride, col, hd, dst) };
        return;
    }
    for (j, &s) in slots.iter().enumerate() {
        for (d, x) in dst[j * hd..(j + 1) * hd]
            .iter_mut()
            .zip(&src[s * stride + col..s * stride + col + hd])
        {
            *d = x.to_f32();
        }
    }
}

/// Converts f16 values to f32 (exact), eight at a time where the CPU
/// allows; `min(src.len(), dst.len())` values.
#[inline]
pub fn f16_to_f32_slice(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().has_avx2() {
        // SAFETY: the CPU supports AVX2 and F16C (checked by `Isa::detect`).
        unsafe { super::avx2::f16_to_f32(src, dst) };
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gathering rows converts exactly what `to_f32` gives, for head sizes
    /// with and without a tail under 8.
    #[test]
    fn gathered_rows_convert_exactly() {
        for hd in [64, 13, 8, 3] {
            let stride = 3 * hd + 5;
            let src: Vec<f16> = (0..40 * stride)
                .map(|i| f16::from_f32((i as f32 * 0.37).sin() * 100.0))
                .collect();
            let slots = [7, 0, 39, 12, 12];
            let col = hd + 2;
            let mut dst = vec![0f32; slots.len() * hd];
            gather_f16_rows(&src, &slots, stride, col, hd, &mut dst);
            for (j, &s) in slots.iter().enumerate() {
                for d in 0..hd {
                    assert_eq!(dst[j * hd + d], src[s * stride + col + d].to_f32());
                }
            }
        }
    }

    /// The many-row kernels (query and output held in registers) give the
    /// same bits as the one-row primitives, for every head size shape:
    /// multiples of 16, of 8 only, over 64 and over 128, and odd sizes.
    #[test]
    fn batched_rows_match_one_at_a_time_bit_for_bit() {
        for hd in [8, 24, 32, 64, 72, 128, 136, 256, 7] {
            let stride = 3 * hd;
            let k: Vec<f16> = (0..stride * 10)
                .map(|i| f16::from_f32(((i * 7 % 13) as f32 - 6.0) * 0.1))
                .collect();
            let q: Vec<f32> = (0..hd).map(|i| (i as f32 - 10.0) * 0.05).collect();
            let slots = [3usize, 0, 9, 4, 4, 7];
            let p = [0.1f32, 0.2, 0.3, 0.4, 0.05, 0.7];
            let col = hd;
            let mut s = vec![0f32; slots.len()];
            scores_f16(&q, &k, &slots, stride, col, 0.5, &mut s);
            for (j, &sl) in slots.iter().enumerate() {
                let want = dot_f16(&q, &k[sl * stride + col..sl * stride + col + hd]) * 0.5;
                assert_eq!(s[j].to_bits(), want.to_bits(), "scores hd={hd}");
            }
            let mut out: Vec<f32> = (0..hd).map(|i| i as f32 * 0.01).collect();
            let mut want = out.clone();
            weighted_sum_f16(&mut out, &p, &k, &slots, stride, col);
            for (&p, &sl) in p.iter().zip(&slots) {
                axpy_f16(&mut want, p, &k[sl * stride + col..sl * stride + col + hd]);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want), "weighted sum hd={hd}");
        }
    }

    #[test]
    fn simd_matches_scalar() {
        for n in [1, 7, 16, 64, 80, 128] {
            let q: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1).collect();
            let k: Vec<f16> = (0..n)
                .map(|i| f16::from_f32(((i * 13 % 7) as f32 - 3.0) * 0.25))
                .collect();
            let scalar: f32 = q.iter().zip(&k).map(|(a, b)| a * b.to_f32()).sum();
            assert!((dot_f16(&q, &k) - scalar).abs() < 1e-4, "dot n={n}");
            let mut out = q.clone();
            axpy_f16(&mut out, 0.5, &k);
            for i in 0..n {
                assert!(
                    (out[i] - (q[i] + 0.5 * k[i].to_f32())).abs() < 1e-5,
                    "axpy n={n}"
                );
            }
        }
    }
}
