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
