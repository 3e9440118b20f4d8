//! AVX2 + FMA + F16C kernels. Every function here requires those features;
//! callers check [`super::Isa::detect`] first.

use core::arch::x86_64::*;
use half::f16;

use super::quant::{ActBlock, BlockFormat, QuantizedActs};
use super::SyncPtr;

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f16(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Dot products of `R` weight rows with `C` activation columns.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const F: u8, const R: usize, const C: usize>(
    rows: [*const u8; R],
    cols: [&[ActBlock]; C],
    k_blocks: usize,
) -> [[f32; C]; R] {
    let bb = match F {
        Q4_0 => 18,
        Q4_1 => 20,
        _ => 34,
    };
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut offset = [[0.0f32; C]; R];
    for b in 0..k_blocks {
        let mut wv = [_mm256_setzero_si256(); R];
        let mut dw = [0.0f32; R];
        let mut mw = [0.0f32; R];
        for r in 0..R {
            let p = rows[r].add(b * bb);
            dw[r] = load_f16(p);
            match F {
                Q8_0 => wv[r] = _mm256_loadu_si256(p.add(2) as *const __m256i),
                _ => {
                    let qs = if F == Q4_1 {
                        mw[r] = load_f16(p.add(2));
                        p.add(4)
                    } else {
                        mw[r] = -8.0 * dw[r];
                        p.add(2)
                    };
                    let lo = _mm_loadu_si128(qs as *const __m128i);
                    let hi = _mm_srli_epi16(lo, 4);
                    wv[r] = _mm256_and_si256(_mm256_set_m128i(hi, lo), mask);
                }
            }
        }
        for c in 0..C {
            let xb = cols[c].get_unchecked(b);
            let xv = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            for r in 0..R {
                let p16 = if F == Q8_0 {
                    _mm256_maddubs_epi16(
                        _mm256_sign_epi8(wv[r], wv[r]),
                        _mm256_sign_epi8(xv, wv[r]),
                    )
                } else {
                    _mm256_maddubs_epi16(wv[r], xv)
                };
                let p32 = _mm256_madd_epi16(p16, ones);
                acc[r][c] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(p32),
                    _mm256_set1_ps(dw[r] * xb.d),
                    acc[r][c],
                );
                if F != Q8_0 {
                    offset[r][c] += mw[r] * xb.s;
                }
            }
        }
    }
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            out[r][c] = hsum(acc[r][c]) + offset[r][c];
        }
    }
    out
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_fmt<const F: u8>(
    bb: usize,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    rows: std::ops::Range<usize>,
    out: SyncPtr,
) {
    let kb = acts.k_blocks;
    let row_ptr = |r: usize| w.as_ptr().add(r * kb * bb);
    let store = |r: usize, c: usize, v: f32| *out.0.add(c * n_rows + r) = v;
    let mut r = rows.start;
    while r < rows.end {
        if r + 4 <= rows.end {
            let rp = [row_ptr(r), row_ptr(r + 1), row_ptr(r + 2), row_ptr(r + 3)];
            let mut c = 0;
            while c + 2 <= acts.cols {
                let o = tile::<F, 4, 2>(rp, [acts.col(c), acts.col(c + 1)], kb);
                for (i, row) in o.iter().enumerate() {
                    store(r + i, c, row[0]);
                    store(r + i, c + 1, row[1]);
                }
                c += 2;
            }
            if c < acts.cols {
                let o = tile::<F, 4, 1>(rp, [acts.col(c)], kb);
                for (i, row) in o.iter().enumerate() {
                    store(r + i, c, row[0]);
                }
            }
            r += 4;
        } else {
            for c in 0..acts.cols {
                let o = tile::<F, 1, 1>([row_ptr(r)], [acts.col(c)], kb);
                store(r, c, o[0][0]);
            }
            r += 1;
        }
    }
}

/// Quantized GEMM over the weight rows in `rows`; see `matmul_quant`.
///
/// # Safety
/// AVX2, FMA and F16C must be available; no other thread may write the
/// output entries of these rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemm_quant(
    fmt: BlockFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    rows: std::ops::Range<usize>,
    out: SyncPtr,
) {
    let bb = fmt.block_bytes();
    match fmt {
        BlockFormat::Q4_0 => gemm_fmt::<Q4_0>(bb, w, n_rows, acts, rows, out),
        BlockFormat::Q4_1 => gemm_fmt::<Q4_1>(bb, w, n_rows, acts, rows, out),
        BlockFormat::Q8_0 => gemm_fmt::<Q8_0>(bb, w, n_rows, acts, rows, out),
    }
}

/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8 * j)),
                _mm256_loadu_ps(pb.add(i + 8 * j)),
                *a,
            );
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i)),
            _mm256_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
    let n = q.len().min(k.len());
    let (pq, pk) = (q.as_ptr(), k.as_ptr() as *const u16);
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        let k0 = _mm256_cvtph_ps(_mm_loadu_si128(pk.add(i) as *const __m128i));
        let k1 = _mm256_cvtph_ps(_mm_loadu_si128(pk.add(i + 8) as *const __m128i));
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), k0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i + 8)), k1, acc1);
        i += 16;
    }
    let mut s = hsum(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += q[i] * k[i].to_f32();
        i += 1;
    }
    s
}

/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn axpy_f16(out: &mut [f32], p: f32, v: &[f16]) {
    let n = out.len().min(v.len());
    let (po, pv) = (out.as_mut_ptr(), v.as_ptr() as *const u16);
    let pp = _mm256_set1_ps(p);
    let mut i = 0;
    while i + 8 <= n {
        let vv = _mm256_cvtph_ps(_mm_loadu_si128(pv.add(i) as *const __m128i));
        _mm256_storeu_ps(
            po.add(i),
            _mm256_fmadd_ps(pp, vv, _mm256_loadu_ps(po.add(i))),
        );
        i += 8;
    }
    while i < n {
        out[i] += p * v[i].to_f32();
        i += 1;
    }
}
