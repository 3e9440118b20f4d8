//! x86 kernels for the plane layout of [`super::planes`]: one body, compiled
//! twice. `gemm_avx2` needs AVX2 + FMA + F16C and sums u8 x i8 products
//! with `vpmaddubsw` / `vpmaddwd` (in i16 only as many products as cannot
//! overflow); `gemm_avx512` adds AVX-512 F/BW/VL + VNNI and sums them with
//! `vpdpbusd` straight into i32 lanes, on 256-bit vectors (twice the
//! registers, no i16 step). Lanes are weight rows: each vector holds 4
//! weights of each of 8 rows, and each activation chunk of 4 bytes is
//! broadcast to all lanes.

// Index arithmetic over bytes, rows and chunks is the layout itself here.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

use super::planes::PlaneFormat;
use super::quant::{ActBlock, QuantizedActs, PACK_ROWS};
use super::SyncPtr;

/// Broadcasts activation bytes `4c..4c + 4` to every 32-bit lane.
#[inline(always)]
unsafe fn bcast4(qs: *const i8, c: usize) -> __m256i {
    _mm256_set1_epi32((qs.add(4 * c) as *const i32).read_unaligned())
}

/// The 8 chunks of one sub-block (`p` = its packed bytes) as u8 quants:
/// chunk `c` holds weights `4c..4c + 4` of each of the 8 rows.
#[inline(always)]
unsafe fn chunks<const HI: usize>(p: *const u8) -> [__m256i; 8] {
    let mask = _mm256_set1_epi8(0x0F);
    let mut w = [_mm256_setzero_si256(); 8];
    for v in 0..4 {
        let raw = _mm256_loadu_si256(p.add(32 * v) as *const __m256i);
        w[v] = _mm256_and_si256(raw, mask);
        w[v + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask);
    }
    if HI == 1 {
        // Bit c of each byte is bit 4 of chunk c's weight.
        let bit = _mm256_set1_epi8(0x10);
        let mut h = _mm256_loadu_si256(p.add(128) as *const __m256i);
        for wc in &mut w {
            *wc = _mm256_or_si256(*wc, _mm256_and_si256(_mm256_slli_epi16::<4>(h), bit));
            h = _mm256_srli_epi16::<1>(h);
        }
    } else if HI == 2 {
        // Bits 2i, 2i+1 of plane p's bytes are bits 4, 5 of chunk 4p + i.
        let bits = _mm256_set1_epi8(0x30);
        for plane in 0..2 {
            let mut h = _mm256_loadu_si256(p.add(128 + 32 * plane) as *const __m256i);
            for i in 0..4 {
                let wc = &mut w[4 * plane + i];
                *wc = _mm256_or_si256(*wc, _mm256_and_si256(_mm256_slli_epi16::<4>(h), bits));
                h = _mm256_srli_epi16::<2>(h);
            }
        }
    }
    w
}

/// Per row, the i32 dot product of chunks `4h..4h + 4` (half `h` of the
/// sub-block: weights `16h..16h + 16`) with the activation bytes `xq`.
/// `HI` bounds the quants (`< 2^(4 + HI)`), which bounds how many u8 x i8
/// pair sums fit an i16 on the AVX2 path.
#[inline(always)]
unsafe fn half_dot<const VNNI: bool, const HI: usize>(
    w: &[__m256i; 8],
    xq: *const i8,
    h: usize,
) -> __m256i {
    let c0 = 4 * h;
    if VNNI {
        let mut s = _mm256_setzero_si256();
        for c in c0..c0 + 4 {
            s = _mm256_dpbusd_epi32(s, w[c], bcast4(xq, c));
        }
        s
    } else {
        let ones = _mm256_set1_epi16(1);
        let p = |c: usize| _mm256_maddubs_epi16(w[c], bcast4(xq, c));
        if HI == 2 {
            // 63 * 127 * 2 per pair sum: two fit an i16, four do not.
            let a = _mm256_add_epi16(p(c0), p(c0 + 1));
            let b = _mm256_add_epi16(p(c0 + 2), p(c0 + 3));
            _mm256_add_epi32(_mm256_madd_epi16(a, ones), _mm256_madd_epi16(b, ones))
        } else {
            // 31 * 127 * 2 * 4 < 2^15.
            let a = _mm256_add_epi16(
                _mm256_add_epi16(p(c0), p(c0 + 1)),
                _mm256_add_epi16(p(c0 + 2), p(c0 + 3)),
            );
            _mm256_madd_epi16(a, ones)
        }
    }
}

/// 8 f16 values (one per row) as f32 lanes.
#[inline(always)]
unsafe fn f16x8(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// 8 bytes (one per row) as f32 lanes, unsigned or signed.
#[inline(always)]
unsafe fn u8x8(p: *const u8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
}

#[inline(always)]
unsafe fn i8x8(p: *const u8) -> __m256i {
    _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))
}

const Q5_0: u8 = 0;
const Q5_1: u8 = 1;
const Q4K: u8 = 2;
const Q5K: u8 = 3;
const Q6K: u8 = 4;

/// One packed group (8 rows, lanes = rows) times `C` activation columns:
/// per column, the 8 rows' dot products.
#[inline(always)]
unsafe fn tile<const F: u8, const HI: usize, const VNNI: bool, const C: usize>(
    fmt: PlaneFormat,
    g: *const u8,
    cols: [*const ActBlock; C],
    n_blocks: usize,
) -> [__m256; C] {
    let gbb = fmt.group_block_bytes();
    let hdr = fmt.header_bytes();
    let sub = fmt.sub_bytes();
    let mut acc = [_mm256_setzero_ps(); C];
    for b in 0..n_blocks {
        let p = g.add(b * gbb);
        let d = f16x8(p);
        match F {
            Q5_0 | Q5_1 => {
                let m = if F == Q5_1 {
                    f16x8(p.add(16))
                } else {
                    _mm256_mul_ps(d, _mm256_set1_ps(-16.0))
                };
                let w = chunks::<HI>(p.add(hdr));
                for c in 0..C {
                    let x = &*cols[c].add(b);
                    let xq = x.qs.as_ptr();
                    let s = _mm256_add_epi32(
                        half_dot::<VNNI, HI>(&w, xq, 0),
                        half_dot::<VNNI, HI>(&w, xq, 1),
                    );
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.d));
                    acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[c]);
                    acc[c] = _mm256_fmadd_ps(m, _mm256_set1_ps(x.s), acc[c]);
                }
            }
            Q4K | Q5K => {
                let dmin = f16x8(p.add(16));
                for j in 0..8 {
                    let scale_j = _mm256_mul_ps(d, u8x8(p.add(32 + 8 * j)));
                    let min_j = _mm256_mul_ps(dmin, u8x8(p.add(96 + 8 * j)));
                    let w = chunks::<HI>(p.add(hdr + j * sub));
                    for c in 0..C {
                        let x = &*cols[c].add(8 * b + j);
                        let xq = x.qs.as_ptr();
                        let s = _mm256_add_epi32(
                            half_dot::<VNNI, HI>(&w, xq, 0),
                            half_dot::<VNNI, HI>(&w, xq, 1),
                        );
                        let scale = _mm256_mul_ps(scale_j, _mm256_set1_ps(x.d));
                        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[c]);
                        acc[c] = _mm256_fnmadd_ps(min_j, _mm256_set1_ps(x.s), acc[c]);
                    }
                }
            }
            _ => {
                // Q6_K: per half, sc * (q . x - 32 * sum(x)) in exact integers.
                for j in 0..8 {
                    let sa = i8x8(p.add(16 + 16 * j));
                    let sb = i8x8(p.add(24 + 16 * j));
                    let w = chunks::<HI>(p.add(hdr + j * sub));
                    for c in 0..C {
                        let x = &*cols[c].add(8 * b + j);
                        let xq = x.qs.as_ptr();
                        let a = _mm256_sub_epi32(
                            half_dot::<VNNI, HI>(&w, xq, 0),
                            _mm256_set1_epi32(32 * x.hs[0] as i32),
                        );
                        let bb = _mm256_sub_epi32(
                            half_dot::<VNNI, HI>(&w, xq, 1),
                            _mm256_set1_epi32(32 * x.hs[1] as i32),
                        );
                        let t =
                            _mm256_add_epi32(_mm256_mullo_epi32(a, sa), _mm256_mullo_epi32(bb, sb));
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.d));
                        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), scale, acc[c]);
                    }
                }
            }
        }
    }
    acc
}

/// Columns per sweep over a task's row groups (kept in L2 while the
/// weights stream past).
const COL_CHUNK: usize = 64;

#[inline(always)]
unsafe fn gemm_fmt<const F: u8, const HI: usize, const VNNI: bool>(
    fmt: PlaneFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    groups: std::ops::Range<usize>,
    out: SyncPtr,
) {
    let kb = acts.k_blocks;
    let n_blocks = kb * 32 / fmt.block_elems();
    let gsize = n_blocks * fmt.group_block_bytes();
    let col = |c: usize| acts.blocks.as_ptr().add(c * kb);
    let store =
        |g: usize, c: usize, v: __m256| _mm256_storeu_ps(out.0.add(c * n_rows + g * PACK_ROWS), v);
    let mut c0 = 0;
    while c0 < acts.cols {
        let c1 = (c0 + COL_CHUNK).min(acts.cols);
        for g in groups.clone() {
            let gp = w.as_ptr().add(g * gsize);
            let mut c = c0;
            while c + 4 <= c1 {
                let cs = [col(c), col(c + 1), col(c + 2), col(c + 3)];
                let o = tile::<F, HI, VNNI, 4>(fmt, gp, cs, n_blocks);
                for (i, v) in o.into_iter().enumerate() {
                    store(g, c + i, v);
                }
                c += 4;
            }
            if c + 2 <= c1 {
                let o = tile::<F, HI, VNNI, 2>(fmt, gp, [col(c), col(c + 1)], n_blocks);
                store(g, c, o[0]);
                store(g, c + 1, o[1]);
                c += 2;
            }
            if c < c1 {
                let o = tile::<F, HI, VNNI, 1>(fmt, gp, [col(c)], n_blocks);
                store(g, c, o[0]);
            }
        }
        c0 = c1;
    }
}

#[inline(always)]
unsafe fn gemm<const VNNI: bool>(
    fmt: PlaneFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    groups: std::ops::Range<usize>,
    out: SyncPtr,
) {
    match fmt {
        PlaneFormat::Q5_0 => gemm_fmt::<Q5_0, 1, VNNI>(fmt, w, n_rows, acts, groups, out),
        PlaneFormat::Q5_1 => gemm_fmt::<Q5_1, 1, VNNI>(fmt, w, n_rows, acts, groups, out),
        PlaneFormat::Q4K => gemm_fmt::<Q4K, 0, VNNI>(fmt, w, n_rows, acts, groups, out),
        PlaneFormat::Q5K => gemm_fmt::<Q5K, 1, VNNI>(fmt, w, n_rows, acts, groups, out),
        PlaneFormat::Q6K => gemm_fmt::<Q6K, 2, VNNI>(fmt, w, n_rows, acts, groups, out),
    }
}

/// The plane-layout GEMM over row groups `groups`; see `matmul_planes`.
///
/// # Safety
/// AVX2, FMA and F16C must be available; no other thread may write the
/// output entries of these rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemm_avx2(
    fmt: PlaneFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    groups: std::ops::Range<usize>,
    out: SyncPtr,
) {
    gemm::<false>(fmt, w, n_rows, acts, groups, out)
}

/// As [`gemm_avx2`] with `vpdpbusd`.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI must be available; no other
/// thread may write the output entries of these rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn gemm_avx512(
    fmt: PlaneFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    groups: std::ops::Range<usize>,
    out: SyncPtr,
) {
    gemm::<true>(fmt, w, n_rows, acts, groups, out)
}
