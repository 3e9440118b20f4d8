//! Vector routines over f16 KV rows: dot products and scaled accumulation.

use half::f16;

use super::Isa;

/// `sum(q[i] * k[i])` where `k` is stored as f16.
#[inline]
pub fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
    debug_assert_eq!(q.len(), k.len());
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx2 {
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
    if Isa::detect() == Isa::Avx2 {
        // SAFETY: as above.
        unsafe { super::avx2::axpy_f16(out, p, v) };
        return;
    }
    for (o, x) in out.iter_mut().zip(v) {
        *o += p * x.to_f32();
    }
}

/// Converts f16 values to f32.
pub fn f16_to_f32_slice(src: &[f16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
