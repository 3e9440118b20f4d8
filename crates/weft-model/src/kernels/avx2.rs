//! AVX2 + FMA + F16C kernels. Every function here requires those features;
//! callers check [`super::Isa::detect`] first.

use core::arch::x86_64::*;
use half::f16;

use super::quant::{ActBlock, BlockFormat, QuantizedActs, PACK_ROWS};
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

/// Broadcasts the 4 activation bytes `qs[4j..4j+4]` to every 32-bit lane.
#[inline(always)]
unsafe fn bcast4(qs: *const i8, j: usize) -> __m256i {
    _mm256_set1_epi32((qs.add(4 * j) as *const i32).read_unaligned())
}

/// One packed group (8 weight rows, lanes = rows) times `C` activation
/// columns: returns per column the 8 row dot products. With `VNNI`, the
/// u8 x i8 sums are `vpdpbusd` into i32 lanes (Q8_0's signed weights are
/// biased by 128 and the bias taken out through the activation sum).
///
/// Only inlined into the `target_feature` entry points below.
#[inline(always)]
unsafe fn packed_tile<const F: u8, const C: usize, const VNNI: bool>(
    g: *const u8,
    cols: [*const ActBlock; C],
    k_blocks: usize,
) -> [__m256; C] {
    let gb = PACK_ROWS
        * match F {
            Q4_0 => 18,
            Q4_1 => 20,
            _ => 34,
        };
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); C];
    for b in 0..k_blocks {
        let p = g.add(b * gb);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
        if F == Q8_0 {
            let q = p.add(16);
            let mut w = [_mm256_setzero_si256(); 8];
            let mut aw = [_mm256_setzero_si256(); 8];
            for j in 0..8 {
                w[j] = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
                aw[j] = _mm256_sign_epi8(w[j], w[j]);
            }
            if VNNI {
                // aw = w + 128 as u8.
                for j in 0..8 {
                    aw[j] = _mm256_xor_si256(w[j], _mm256_set1_epi8(-128));
                }
            }
            for c in 0..C {
                let x = &*cols[c].add(b);
                let xq = x.qs.as_ptr();
                let mut s = _mm256_setzero_si256();
                if VNNI {
                    for (j, awj) in aw.iter().enumerate() {
                        s = _mm256_dpbusd_epi32(s, *awj, bcast4(xq, j));
                    }
                    let bias = 128 * (x.hs[0] as i32 + x.hs[1] as i32);
                    s = _mm256_sub_epi32(s, _mm256_set1_epi32(bias));
                } else {
                    for j in 0..8 {
                        let xs = _mm256_sign_epi8(bcast4(xq, j), w[j]);
                        let p16 = _mm256_maddubs_epi16(aw[j], xs);
                        s = _mm256_add_epi32(s, _mm256_madd_epi16(p16, ones));
                    }
                }
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(x.d));
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[c]);
            }
        } else {
            let (mw, q) = if F == Q4_1 {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i)),
                    p.add(32),
                )
            } else {
                (_mm256_mul_ps(dw, _mm256_set1_ps(-8.0)), p.add(16))
            };
            // w[j] holds weights 4j..4j+4 of each row: low nibbles of chunk
            // j for j < 4, high nibbles of chunk j - 4 (weights 16 + ...).
            let mut w = [_mm256_setzero_si256(); 8];
            for j in 0..4 {
                let raw = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
                w[j] = _mm256_and_si256(raw, mask);
                w[j + 4] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            }
            for c in 0..C {
                let x = &*cols[c].add(b);
                let xq = x.qs.as_ptr();
                let s = if VNNI {
                    let mut s = _mm256_setzero_si256();
                    for (j, wj) in w.iter().enumerate() {
                        s = _mm256_dpbusd_epi32(s, *wj, bcast4(xq, j));
                    }
                    s
                } else {
                    // 8 products of u4 x i8 pairs: |sum| <= 8 * 2 * 15 * 127 < 2^15.
                    let mut s16 = _mm256_maddubs_epi16(w[0], bcast4(xq, 0));
                    for (j, wj) in w.iter().enumerate().skip(1) {
                        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(*wj, bcast4(xq, j)));
                    }
                    _mm256_madd_epi16(s16, ones)
                };
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(x.d));
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[c]);
                acc[c] = _mm256_fmadd_ps(mw, _mm256_set1_ps(x.s), acc[c]);
            }
        }
    }
    acc
}

/// Columns per sweep over a task's weight rows: keeps that many activation
/// columns in L2 while the rows stream past.
const COL_CHUNK: usize = 64;

#[inline(always)]
unsafe fn gemm_packed_fmt<const F: u8, const VNNI: bool>(
    bb: usize,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    groups: std::ops::Range<usize>,
    out: SyncPtr,
) {
    let kb = acts.k_blocks;
    let col = |c: usize| acts.blocks.as_ptr().add(c * kb);
    let store =
        |g: usize, c: usize, v: __m256| _mm256_storeu_ps(out.0.add(c * n_rows + g * PACK_ROWS), v);
    let mut c0 = 0;
    while c0 < acts.cols {
        let c1 = (c0 + COL_CHUNK).min(acts.cols);
        for g in groups.clone() {
            let gp = w.as_ptr().add(g * kb * PACK_ROWS * bb);
            let mut c = c0;
            while c + 4 <= c1 {
                let o =
                    packed_tile::<F, 4, VNNI>(gp, [col(c), col(c + 1), col(c + 2), col(c + 3)], kb);
                for (i, v) in o.into_iter().enumerate() {
                    store(g, c + i, v);
                }
                c += 4;
            }
            if c + 2 <= c1 {
                let o = packed_tile::<F, 2, VNNI>(gp, [col(c), col(c + 1)], kb);
                store(g, c, o[0]);
                store(g, c + 1, o[1]);
                c += 2;
            }
            if c < c1 {
                let o = packed_tile::<F, 1, VNNI>(gp, [col(c)], kb);
                store(g, c, o[0]);
            }
        }
        c0 = c1;
    }
}

/// Quantized GEMM over the packed row groups in `groups`; see `matmul_packed`.
///
/// # Safety
/// AVX2, FMA and F16C must be available; no other thread may write the
/// output entries of these rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemm_packed(
    fmt: BlockFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    groups: std::ops::Range<usize>,
    out: SyncPtr,
) {
    gemm_packed_any::<false>(fmt, w, n_rows, acts, groups, out)
}

/// As [`gemm_packed`] with `vpdpbusd`.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI must be available; no other
/// thread may write the output entries of these rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn gemm_packed_avx512(
    fmt: BlockFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    groups: std::ops::Range<usize>,
    out: SyncPtr,
) {
    gemm_packed_any::<true>(fmt, w, n_rows, acts, groups, out)
}

#[inline(always)]
unsafe fn gemm_packed_any<const VNNI: bool>(
    fmt: BlockFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    groups: std::ops::Range<usize>,
    out: SyncPtr,
) {
    let bb = fmt.block_bytes();
    match fmt {
        BlockFormat::Q4_0 => gemm_packed_fmt::<Q4_0, VNNI>(bb, w, n_rows, acts, groups, out),
        BlockFormat::Q4_1 => gemm_packed_fmt::<Q4_1, VNNI>(bb, w, n_rows, acts, groups, out),
        BlockFormat::Q8_0 => gemm_packed_fmt::<Q8_0, VNNI>(bb, w, n_rows, acts, groups, out),
    }
}

/// Quantizes 32 activations like the scalar `quantize_acts` loop, with the
/// same results bit for bit: returns `(d, sum of qs)` and fills `qs`.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_block(x: &[f32; 32], qs: &mut [i8; 32]) -> (f32, i32) {
    let p = x.as_ptr();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let v = [0, 1, 2, 3].map(|i| _mm256_loadu_ps(p.add(8 * i)));
    let mut m = _mm256_and_ps(v[0], abs_mask);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_and_ps(*vi, abs_mask));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let idv = _mm256_set1_ps(id);
    let half = _mm256_set1_ps(0.5);
    let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let one = _mm256_set1_ps(1.0);
    let mut q = [_mm256_setzero_si256(); 4];
    let mut sum = _mm256_setzero_si256();
    for i in 0..4 {
        let y = _mm256_mul_ps(v[i], idv);
        // Round half away from zero (`f32::round`): truncate, then step away
        // from zero when the dropped fraction is at least one half.
        let t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        let frac = _mm256_and_ps(_mm256_sub_ps(y, t), abs_mask);
        let step = _mm256_or_ps(one, _mm256_and_ps(y, sign));
        let r = _mm256_add_ps(
            t,
            _mm256_and_ps(_mm256_cmp_ps(frac, half, _CMP_GE_OQ), step),
        );
        q[i] = _mm256_cvtps_epi32(r);
        sum = _mm256_add_epi32(sum, q[i]);
    }
    // i32 -> i8 with lane fix-up (packs work within 128-bit halves).
    let q01 = _mm256_packs_epi32(q[0], q[1]);
    let q23 = _mm256_packs_epi32(q[2], q[3]);
    let b = _mm256_packs_epi16(q01, q23);
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, b);
    let s4 = _mm_add_epi32(
        _mm256_castsi256_si128(sum),
        _mm256_extracti128_si256(sum, 1),
    );
    let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1));
    (d, _mm_cvtsi128_si32(s1))
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

/// See `attention::gather_f16_rows`.
///
/// # Safety
/// AVX2 and F16C must be available; every row lies inside `src` and `dst`
/// holds `slots.len() * hd` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gather_f16_rows(
    src: &[f16],
    slots: &[usize],
    stride: usize,
    col: usize,
    hd: usize,
    dst: &mut [f32],
) {
    let ps = src.as_ptr() as *const u16;
    for (j, &s) in slots.iter().enumerate() {
        let row = ps.add(s * stride + col);
        let out = dst.as_mut_ptr().add(j * hd);
        let mut i = 0;
        while i + 8 <= hd {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(row.add(i) as *const __m128i));
            _mm256_storeu_ps(out.add(i), v);
            i += 8;
        }
        while i < hd {
            *out.add(i) = f16::from_bits(*row.add(i)).to_f32();
            i += 1;
        }
    }
}

/// `dst[i] = src[i] as f32` for `min(src.len(), dst.len())` values.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (ps, pd) = (src.as_ptr() as *const u16, dst.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_cvtph_ps(_mm_loadu_si128(ps.add(i) as *const __m128i));
        _mm256_storeu_ps(pd.add(i), v);
        i += 8;
    }
    while i < n {
        dst[i] = src[i].to_f32();
        i += 1;
    }
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

/// `out[j] = scale * q . k[slots[j] * stride + col ..][..q.len()]`: one
/// query's scores over many f16 key rows in one call.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn scores_f16(
    q: &[f32],
    k: &[f16],
    slots: &[usize],
    stride: usize,
    col: usize,
    scale: f32,
    out: &mut [f32],
) {
    let hd = q.len();
    let in_bounds = slots
        .iter()
        .max()
        .is_none_or(|&s| s * stride + col + hd <= k.len());
    if !hd.is_multiple_of(16) || hd > 128 || !in_bounds {
        for (o, &s) in out.iter_mut().zip(slots) {
            let at = s * stride + col;
            *o = dot_f16(q, &k[at..at + hd]) * scale;
        }
        return;
    }
    // The query stays in registers across all rows; per row the same
    // fused multiply-adds as `dot_f16`, in the same order (bit-identical).
    let n = hd / 8;
    let mut qv = [_mm256_setzero_ps(); 16];
    for (i, v) in qv.iter_mut().enumerate().take(n) {
        *v = _mm256_loadu_ps(q.as_ptr().add(8 * i));
    }
    let pk = k.as_ptr() as *const u16;
    for (o, &s) in out.iter_mut().zip(slots) {
        let row = pk.add(s * stride + col);
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i < n {
            let k0 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * i) as *const __m128i));
            let k1 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * i + 8) as *const __m128i));
            acc0 = _mm256_fmadd_ps(qv[i], k0, acc0);
            acc1 = _mm256_fmadd_ps(qv[i + 1], k1, acc1);
            i += 2;
        }
        *o = hsum(_mm256_add_ps(acc0, acc1)) * scale;
    }
}

/// `out += sum_j p[j] * v[slots[j] * stride + col ..][..out.len()]`.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn weighted_sum_f16(
    out: &mut [f32],
    p: &[f32],
    v: &[f16],
    slots: &[usize],
    stride: usize,
    col: usize,
) {
    let hd = out.len();
    let in_bounds = slots
        .iter()
        .max()
        .is_none_or(|&s| s * stride + col + hd <= v.len());
    if !hd.is_multiple_of(8) || !in_bounds {
        for (&pj, &s) in p.iter().zip(slots) {
            let at = s * stride + col;
            axpy_f16(out, pj, &v[at..at + hd]);
        }
        return;
    }
    // The output stays in registers, 64 values at a time, across all rows
    // (the same fused multiply-adds in the same order as `axpy_f16` row by
    // row, so the result is bit-identical; only the loads and stores of
    // `out` per row are gone).
    let pv = v.as_ptr() as *const u16;
    let mut c0 = 0;
    while c0 < hd {
        let width = (hd - c0).min(64) / 8;
        let po = out.as_mut_ptr().add(c0);
        let mut acc = [_mm256_setzero_ps(); 8];
        for (r, a) in acc.iter_mut().enumerate().take(width) {
            *a = _mm256_loadu_ps(po.add(8 * r));
        }
        for (&pj, &s) in p.iter().zip(slots) {
            let row = pv.add(s * stride + col + c0);
            let pp = _mm256_set1_ps(pj);
            for (r, a) in acc.iter_mut().enumerate().take(width) {
                let vv = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * r) as *const __m128i));
                *a = _mm256_fmadd_ps(pp, vv, *a);
            }
        }
        for (r, a) in acc.iter().enumerate().take(width) {
            _mm256_storeu_ps(po.add(8 * r), *a);
        }
        c0 += 8 * width;
    }
}

/// Four weight rows against four token columns, `k` a multiple of 8:
/// `out[t][r] = w[r] . x[t]`. Each step loads 4 + 4 vectors for 16 FMAs, so
/// a batch of tokens reads each weight vector once instead of once per
/// token.
///
/// # Safety
/// AVX2 and FMA must be available; `w` holds 4 rows and `x` 4 columns of
/// `k` values each (row stride `k`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f32_4x4(w: &[f32], x: &[f32], k: usize) -> [[f32; 4]; 4] {
    debug_assert!(k.is_multiple_of(8) && w.len() >= 4 * k && x.len() >= 4 * k);
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 4]; 4];
    let mut i = 0;
    while i < k {
        let wv = [
            _mm256_loadu_ps(pw.add(i)),
            _mm256_loadu_ps(pw.add(k + i)),
            _mm256_loadu_ps(pw.add(2 * k + i)),
            _mm256_loadu_ps(pw.add(3 * k + i)),
        ];
        for (t, row) in acc.iter_mut().enumerate() {
            let xv = _mm256_loadu_ps(px.add(t * k + i));
            for (r, a) in row.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(wv[r], xv, *a);
            }
        }
        i += 8;
    }
    let mut out = [[0f32; 4]; 4];
    for t in 0..4 {
        for r in 0..4 {
            out[t][r] = hsum(acc[t][r]);
        }
    }
    out
}

/// Scores of several query heads (one GQA group) over the same K rows: each
/// row is converted from f16 once for the whole group. `out[h * n + j] =
/// scale * qs[h] . k_row(slots[j])`, with `n = slots.len()`.
///
/// # Safety
/// AVX2, FMA and F16C must be available; every query has the same length, a
/// multiple of 16 and at most 128; every row lies inside `k`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn group_scores(
    qs: &[&[f32]],
    k: &[f16],
    slots: &[usize],
    stride: usize,
    col: usize,
    scale: f32,
    out: &mut [f32],
) {
    let run = GroupScores {
        qs,
        k: k.as_ptr() as *const u16,
        slots,
        stride,
        col,
        scale,
        out: out.as_mut_ptr(),
    };
    // The converted K row stays in registers when its length is known.
    match qs[0].len() / 8 {
        2 => run.rows::<2>(),
        4 => run.rows::<4>(),
        6 => run.rows::<6>(),
        8 => run.rows::<8>(),
        10 => run.rows::<10>(),
        12 => run.rows::<12>(),
        14 => run.rows::<14>(),
        _ => run.rows::<16>(),
    }
}

struct GroupScores<'a> {
    qs: &'a [&'a [f32]],
    k: *const u16,
    slots: &'a [usize],
    stride: usize,
    col: usize,
    scale: f32,
    out: *mut f32,
}

impl GroupScores<'_> {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows<const N: usize>(&self) {
        let n = self.slots.len();
        let heads = self.qs.len();
        let mut j = 0;
        while j < n {
            let row = self
                .k
                .add(*self.slots.get_unchecked(j) * self.stride + self.col);
            let mut kr = [_mm256_setzero_ps(); N];
            #[allow(clippy::needless_range_loop)] // constant bounds: unrolled, in registers
            for r in 0..N {
                kr[r] = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * r) as *const __m128i));
            }
            let mut h = 0;
            while h < heads {
                let pq = self.qs.get_unchecked(h).as_ptr();
                let mut acc0 = _mm256_setzero_ps();
                let mut acc1 = _mm256_setzero_ps();
                let mut r = 0;
                while r < N {
                    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(8 * r)), kr[r], acc0);
                    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(8 * r + 8)), kr[r + 1], acc1);
                    r += 2;
                }
                *self.out.add(h * n + j) = hsum(_mm256_add_ps(acc0, acc1)) * self.scale;
                h += 1;
            }
            j += 1;
        }
    }
}

/// `out[h] += sum_j p[h * n + j] * v_row(slots[j])` for every head `h` of a
/// group (`out` holds the heads' outputs side by side, `hd` each): each V
/// row is converted once for the whole group, and the outputs stay in
/// registers, `W` vectors of each of the `H` heads per pass over the rows.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `hd` is a multiple of 8 and at
/// most 128; every row lies inside `v`; `p` holds `heads * slots.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn group_weighted_sum(
    out: &mut [f32],
    hd: usize,
    p: &[f32],
    v: &[f16],
    slots: &[usize],
    stride: usize,
    col: usize,
) {
    let heads = out.len() / hd;
    let run = GroupSum {
        out: out.as_mut_ptr(),
        hd,
        p: p.as_ptr(),
        v: v.as_ptr() as *const u16,
        slots,
        stride,
        col,
    };
    // Enough independent accumulators (H x W) to hide the FMA latency,
    // few enough to stay in the 16 registers.
    match heads {
        1 => run.passes::<1, 8>(),
        2 => run.passes::<2, 4>(),
        3 => run.passes::<3, 4>(),
        4 => run.passes::<4, 2>(),
        5 => run.passes::<5, 2>(),
        6 => run.passes::<6, 2>(),
        7 => run.passes::<7, 1>(),
        8 => run.passes::<8, 1>(),
        _ => {
            let n = slots.len();
            for h in 0..heads {
                weighted_sum_f16(
                    std::slice::from_raw_parts_mut(run.out.add(h * hd), hd),
                    std::slice::from_raw_parts(run.p.add(h * n), n),
                    v,
                    slots,
                    stride,
                    col,
                );
            }
        }
    }
}

struct GroupSum<'a> {
    out: *mut f32,
    hd: usize,
    p: *const f32,
    v: *const u16,
    slots: &'a [usize],
    stride: usize,
    col: usize,
}

impl GroupSum<'_> {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn passes<const H: usize, const W: usize>(&self) {
        let nreg = self.hd / 8;
        let mut c = 0;
        while c + W <= nreg {
            self.pass::<H, W>(c);
            c += W;
        }
        while c < nreg {
            self.pass::<H, 1>(c);
            c += 1;
        }
    }

    /// Output vectors `c .. c + W` of every head, over all rows.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pass<const H: usize, const W: usize>(&self, c: usize) {
        let n = self.slots.len();
        let mut acc = [[_mm256_setzero_ps(); W]; H];
        #[allow(clippy::needless_range_loop)] // constant bounds: unrolled, in registers
        for h in 0..H {
            for r in 0..W {
                acc[h][r] = _mm256_loadu_ps(self.out.add(h * self.hd + 8 * (c + r)));
            }
        }
        let mut j = 0;
        while j < n {
            let row = self
                .v
                .add(*self.slots.get_unchecked(j) * self.stride + self.col + 8 * c);
            let mut vr = [_mm256_setzero_ps(); W];
            #[allow(clippy::needless_range_loop)]
            for r in 0..W {
                vr[r] = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * r) as *const __m128i));
            }
            #[allow(clippy::needless_range_loop)]
            for h in 0..H {
                let pp = _mm256_set1_ps(*self.p.add(h * n + j));
                for r in 0..W {
                    acc[h][r] = _mm256_fmadd_ps(pp, vr[r], acc[h][r]);
                }
            }
            j += 1;
        }
        #[allow(clippy::needless_range_loop)]
        for h in 0..H {
            for r in 0..W {
                _mm256_storeu_ps(self.out.add(h * self.hd + 8 * (c + r)), acc[h][r]);
            }
        }
    }
}

/// `x[i] = exp(x[i] - max)` with the polynomial of `decode::expf::scalar`,
/// eight at a time (bit-identical to it).
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp_shifted(x: &mut [f32], max: f32) {
    use super::decode::expf::*;
    let n = x.len();
    let p = x.as_mut_ptr();
    let m = _mm256_set1_ps(max);
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m);
        let z = _mm256_fmadd_ps(v, _mm256_set1_ps(LOG2E), _mm256_set1_ps(SHIFT));
        let nn = _mm256_sub_ps(z, _mm256_set1_ps(SHIFT));
        let b = _mm256_fnmadd_ps(
            nn,
            _mm256_set1_ps(LN2_LO),
            _mm256_fnmadd_ps(nn, _mm256_set1_ps(LN2_HI), v),
        );
        let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
        let k = _mm256_castsi256_ps(_mm256_add_epi32(
            e,
            _mm256_castps_si256(_mm256_set1_ps(1.0)),
        ));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(_mm256_set1_ps(C0), b, _mm256_set1_ps(C1)),
                u,
                _mm256_fmadd_ps(_mm256_set1_ps(C2), b, _mm256_set1_ps(C3)),
            ),
            u,
            _mm256_mul_ps(_mm256_set1_ps(C4), b),
        );
        let r = _mm256_fmadd_ps(j, k, k);
        // Under the normal range (and -inf): 0. NaN stays NaN.
        let keep = _mm256_cmp_ps(v, _mm256_set1_ps(MIN), _CMP_GE_OQ);
        let nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
        let r = _mm256_blendv_ps(_mm256_and_ps(r, keep), v, nan);
        _mm256_storeu_ps(p.add(i), r);
        i += 8;
    }
    while i < n {
        x[i] = super::decode::expf::scalar(x[i] - max);
        i += 1;
    }
}
