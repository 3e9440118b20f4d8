//! Quantized activations and the row-parallel matrix multiplications.

use half::f16;
use rayon::prelude::*;

use super::{Isa, SyncPtr};

/// Weight block layouts with a hand-written kernel (llama.cpp / GGUF layouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// `d: f16, qs: [u8; 16]`; value = d * (nibble - 8).
    Q4_0,
    /// `d: f16, m: f16, qs: [u8; 16]`; value = d * nibble + m.
    Q4_1,
    /// `d: f16, qs: [i8; 32]`; value = d * q.
    Q8_0,
}

impl BlockFormat {
    pub const ELEMS: usize = 32;

    /// Bytes per block of 32 weights.
    pub const fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q8_0 => 34,
        }
    }
}

/// One block of 32 activations quantized to i8: `x ~= d * qs`, with
/// `s = d * sum(qs)` kept for the offset term of weights with an offset
/// (Q4_0, Q4_1, Q5_x, Q4_K, Q5_K), and the exact sums of each half of 16
/// (`hs`) for Q6_K's per-16 scales.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct ActBlock {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
    pub hs: [i16; 2],
}

/// A batch of activation rows (one per token), quantized block by block.
#[derive(Debug, Default)]
pub struct QuantizedActs {
    pub(crate) blocks: Vec<ActBlock>,
    pub(crate) cols: usize,
    pub(crate) k_blocks: usize,
}

impl QuantizedActs {
    pub fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn col(&self, c: usize) -> &[ActBlock] {
        &self.blocks[c * self.k_blocks..(c + 1) * self.k_blocks]
    }
}

/// Quantizes `x` (`cols` rows of length `k`, `k` a multiple of 32) into `out`,
/// reusing its allocation. Rounding follows llama.cpp's `quantize_row_q8_1`:
/// `d = amax / 127` and `s` are stored rounded to f16.
pub fn quantize_acts(x: &[f32], cols: usize, k: usize, out: &mut QuantizedActs) {
    assert_eq!(x.len(), cols * k, "activation shape");
    assert_eq!(k % 32, 0, "k must be a multiple of 32");
    let k_blocks = k / 32;
    out.cols = cols;
    out.k_blocks = k_blocks;
    out.blocks.clear();
    out.blocks.resize(cols * k_blocks, ActBlock::default());
    let isa = Isa::detect();
    let quantize = |x: &[f32], blocks: &mut [ActBlock]| {
        for (chunk, blk) in x.chunks_exact(32).zip(blocks) {
            let chunk: &[f32; 32] = chunk.try_into().expect("32 values");
            let mut qs = [0i8; 32];
            let (d, sum) = match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX2/FMA/F16C present.
                Isa::Avx2 | Isa::Avx512 => unsafe { super::avx2::quantize_block(chunk, &mut qs) },
                _ => quantize_block_scalar(chunk, &mut qs),
            };
            let half = |h: usize| qs[16 * h..16 * h + 16].iter().map(|&q| q as i16).sum();
            *blk = ActBlock {
                d: f16::from_f32(d).to_f32(),
                s: f16::from_f32(d * sum as f32).to_f32(),
                hs: [half(0), half(1)],
                qs,
            };
        }
    };
    // A prefill's activations are worth spreading over the cores (each
    // block is independent, so the result does not depend on the split).
    let per_task = (16 * 1024 / k).max(1);
    if cols > per_task {
        out.blocks
            .par_chunks_mut(per_task * k_blocks)
            .zip(x.par_chunks(per_task * k))
            .for_each(|(b, x)| quantize(x, b));
    } else {
        quantize(x, &mut out.blocks);
    }
}

/// The reference for one block of [`quantize_acts`]: returns `(d, sum of qs)`.
fn quantize_block_scalar(chunk: &[f32; 32], qs: &mut [i8; 32]) -> (f32, i32) {
    let amax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(chunk) {
        let r = (v * id).round() as i32;
        *q = r as i8;
        sum += r;
    }
    (d, sum)
}

/// Rows per group in the packed (row-interleaved) weight layout.
pub const PACK_ROWS: usize = 8;

impl BlockFormat {
    /// Bytes of scales (and offsets) at the start of a packed group block.
    const fn packed_header(self) -> usize {
        match self {
            BlockFormat::Q4_1 => 32,
            _ => 16,
        }
    }
}

/// Repacks `rows` GGUF rows (`k_blocks` blocks each, `rows` a multiple of
/// [`PACK_ROWS`]) into the row-interleaved layout the packed kernels read.
///
/// Rows come in groups of 8; a group stores, block after block: the 8 rows'
/// f16 scales `d`, for Q4_1 their 8 f16 offsets `m`, then their quant bytes
/// in 4-byte chunks: chunk `j` holds bytes `4j..4j+4` of row 0, then of row 1,
/// ..., row 7. So one vector load gives 4 bytes of each of 8 rows (lanes =
/// rows), and every row keeps exactly its GGUF bytes.
pub fn pack_rows(fmt: BlockFormat, data: &[u8], rows: usize, k_blocks: usize) -> Vec<u8> {
    let bb = fmt.block_bytes();
    assert_eq!(rows % PACK_ROWS, 0, "packed rows");
    assert_eq!(data.len(), rows * k_blocks * bb, "weight shape");
    let hdr = fmt.packed_header();
    let mut out = vec![0u8; data.len()];
    for r in 0..rows {
        let (g, i) = (r / PACK_ROWS, r % PACK_ROWS);
        for b in 0..k_blocks {
            let src = &data[(r * k_blocks + b) * bb..][..bb];
            let base = (g * k_blocks + b) * PACK_ROWS * bb;
            let dst = &mut out[base..base + PACK_ROWS * bb];
            dst[2 * i..2 * i + 2].copy_from_slice(&src[..2]);
            let qs = if fmt == BlockFormat::Q4_1 {
                dst[16 + 2 * i..18 + 2 * i].copy_from_slice(&src[2..4]);
                &src[4..]
            } else {
                &src[2..]
            };
            for (j, chunk) in qs.chunks_exact(4).enumerate() {
                let at = hdr + j * 4 * PACK_ROWS + 4 * i;
                dst[at..at + 4].copy_from_slice(chunk);
            }
        }
    }
    out
}

/// The GGUF bytes of block `b` of row `r` of a packed matrix (the first
/// `fmt.block_bytes()` bytes of the result).
pub fn packed_block(
    fmt: BlockFormat,
    data: &[u8],
    k_blocks: usize,
    r: usize,
    b: usize,
) -> [u8; 34] {
    let bb = fmt.block_bytes();
    let hdr = fmt.packed_header();
    let (g, i) = (r / PACK_ROWS, r % PACK_ROWS);
    let src = &data[(g * k_blocks + b) * PACK_ROWS * bb..][..PACK_ROWS * bb];
    let mut out = [0u8; 34];
    out[..2].copy_from_slice(&src[2 * i..2 * i + 2]);
    let q0 = if fmt == BlockFormat::Q4_1 {
        out[2..4].copy_from_slice(&src[16 + 2 * i..18 + 2 * i]);
        4
    } else {
        2
    };
    for j in 0..(bb - q0) / 4 {
        let at = hdr + j * 4 * PACK_ROWS + 4 * i;
        out[q0 + 4 * j..q0 + 4 * j + 4].copy_from_slice(&src[at..at + 4]);
    }
    out
}

/// Inverse of [`pack_rows`].
pub fn unpack_rows(fmt: BlockFormat, data: &[u8], rows: usize, k_blocks: usize) -> Vec<u8> {
    let bb = fmt.block_bytes();
    let mut out = Vec::with_capacity(data.len());
    for r in 0..rows {
        for b in 0..k_blocks {
            out.extend_from_slice(&packed_block(fmt, data, k_blocks, r, b)[..bb]);
        }
    }
    out
}

/// Runs `f` on `n` index ranges that split `0..n_items`, in parallel on the
/// current rayon pool (inline when `n == 1`).
pub(crate) fn split_par(n_items: usize, n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    if n <= 1 {
        f(0..n_items);
        return;
    }
    (0..n).into_par_iter().for_each(|t| {
        let start = n_items * t / n;
        let end = n_items * (t + 1) / n;
        if start < end {
            f(start..end);
        }
    });
}

/// Like [`matmul_quant`] for weights in the packed layout ([`pack_rows`]).
pub fn matmul_packed(
    fmt: BlockFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    out: &mut [f32],
) {
    matmul_packed_isa(Isa::detect(), fmt, w, n_rows, acts, out)
}

/// [`matmul_packed`] on a given instruction set (which the CPU must have).
pub(crate) fn matmul_packed_isa(
    isa: Isa,
    fmt: BlockFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    out: &mut [f32],
) {
    let k_blocks = acts.k_blocks;
    let row_bytes = k_blocks * fmt.block_bytes();
    assert_eq!(n_rows % PACK_ROWS, 0, "packed rows");
    assert_eq!(w.len(), n_rows * row_bytes, "weight shape");
    assert_eq!(out.len(), acts.cols * n_rows, "output shape");
    assert!(isa.supported(), "{isa:?} is not available on this CPU");
    let ptr = SyncPtr(out.as_mut_ptr());
    let groups = n_rows / PACK_ROWS;
    // Enough work per task to amortise waking a thread (~64 KiB of weights
    // x columns), at most a few tasks per thread for balance.
    let threads = rayon::current_num_threads().max(1);
    let work = w.len() * acts.cols.max(1);
    let n_tasks = (work / (64 * 1024)).clamp(1, threads * 2).min(groups);
    split_par(groups, n_tasks, |g| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA/F16C present (asserted); the rows of groups `g` are this task's alone.
        Isa::Avx2 => unsafe { super::avx2::gemm_packed(fmt, w, n_rows, acts, g, ptr) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, with AVX-512 VNNI.
        Isa::Avx512 => unsafe { super::avx2::gemm_packed_avx512(fmt, w, n_rows, acts, g, ptr) },
        _ => gemm_packed_scalar(fmt, w, n_rows, acts, g, ptr),
    });
}

fn gemm_packed_scalar(
    fmt: BlockFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    groups: std::ops::Range<usize>,
    out: SyncPtr,
) {
    let bb = fmt.block_bytes();
    let k_blocks = acts.k_blocks;
    for r in groups.start * PACK_ROWS..groups.end * PACK_ROWS {
        for c in 0..acts.cols {
            let xs = acts.col(c);
            let mut acc = 0.0f32;
            for (b, x) in xs.iter().enumerate() {
                let blk = packed_block(fmt, w, k_blocks, r, b);
                let (d, m, v) = decode_block(fmt, &blk[..bb]);
                let isum: i32 = v.iter().zip(&x.qs).map(|(a, b)| a * *b as i32).sum();
                acc += d * x.d * isum as f32 + m * x.s;
            }
            // SAFETY: (c, r) is written by this task only; the index is in bounds.
            unsafe { *out.0.add(c * n_rows + r) = acc };
        }
    }
}

/// How many rows one parallel task takes: enough work per task to amortise
/// scheduling, enough tasks to balance the threads.
fn rows_per_task(n_rows: usize, bytes_per_row: usize, cols: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let target_tasks = threads * 4;
    let by_balance = n_rows.div_ceil(target_tasks);
    // At least ~32 KiB of weights x columns per task.
    let min_rows = (32 * 1024 / (bytes_per_row * cols.max(1)).max(1)).max(4);
    let rows = by_balance.max(min_rows).min(n_rows.max(1));
    rows.div_ceil(4) * 4
}

/// `out[c * n_rows + r] = dot(w[r], x[c])` for quantized weights `w`
/// (`n_rows` rows of `k` values in `fmt` blocks) and quantized activations.
/// Rows are split across the rayon pool.
pub fn matmul_quant(
    fmt: BlockFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    out: &mut [f32],
) {
    let k_blocks = acts.k_blocks;
    let row_bytes = k_blocks * fmt.block_bytes();
    assert_eq!(w.len(), n_rows * row_bytes, "weight shape");
    assert_eq!(out.len(), acts.cols * n_rows, "output shape");
    let isa = Isa::detect();
    let ptr = SyncPtr(out.as_mut_ptr());
    let step = rows_per_task(n_rows, row_bytes, acts.cols);
    let run = |start: usize| {
        let end = (start + step).min(n_rows);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2/FMA/F16C present; rows [start, end) are this task's alone.
            Isa::Avx2 | Isa::Avx512 => unsafe {
                super::avx2::gemm_quant(fmt, w, n_rows, acts, start..end, ptr)
            },
            _ => gemm_quant_scalar(fmt, w, n_rows, acts, start..end, ptr),
        }
    };
    if n_rows <= step {
        run(0);
    } else {
        (0..n_rows)
            .step_by(step)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(run);
    }
}

/// Decodes one weight block into (scale, offset, values) such that each weight
/// equals `scale * value + offset`.
#[inline]
pub(crate) fn decode_block(fmt: BlockFormat, b: &[u8]) -> (f32, f32, [i32; 32]) {
    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
    let mut v = [0i32; 32];
    match fmt {
        BlockFormat::Q8_0 => {
            for (j, q) in b[2..34].iter().enumerate() {
                v[j] = *q as i8 as i32;
            }
            (d, 0.0, v)
        }
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            let (m, qs) = if fmt == BlockFormat::Q4_1 {
                (f16::from_le_bytes([b[2], b[3]]).to_f32(), &b[4..20])
            } else {
                (-8.0 * d, &b[2..18])
            };
            for (j, q) in qs.iter().enumerate() {
                v[j] = (q & 0x0F) as i32;
                v[j + 16] = (q >> 4) as i32;
            }
            (d, m, v)
        }
    }
}

fn gemm_quant_scalar(
    fmt: BlockFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    rows: std::ops::Range<usize>,
    out: SyncPtr,
) {
    let bb = fmt.block_bytes();
    let k_blocks = acts.k_blocks;
    for r in rows {
        let row = &w[r * k_blocks * bb..(r + 1) * k_blocks * bb];
        for c in 0..acts.cols {
            let xs = acts.col(c);
            let mut acc = 0.0f32;
            for (blk, x) in row.chunks_exact(bb).zip(xs) {
                let (d, m, v) = decode_block(fmt, blk);
                let isum: i32 = v.iter().zip(&x.qs).map(|(a, b)| a * *b as i32).sum();
                acc += d * x.d * isum as f32 + m * x.s;
            }
            // SAFETY: (c, r) is written by this task only; the index is in bounds.
            unsafe { *out.0.add(c * n_rows + r) = acc };
        }
    }
}

/// `out[c * n_rows + r] = dot(w[r], x[c])` for f32 weights (`n_rows x k`,
/// row-major) and `cols` f32 activation rows of length `k`. Rows are split
/// across the rayon pool.
pub fn matmul_f32(w: &[f32], n_rows: usize, k: usize, x: &[f32], cols: usize, out: &mut [f32]) {
    assert_eq!(w.len(), n_rows * k, "weight shape");
    assert_eq!(x.len(), cols * k, "activation shape");
    assert_eq!(out.len(), cols * n_rows, "output shape");
    let ptr = SyncPtr(out.as_mut_ptr());
    let step = rows_per_task(n_rows, k * 4, cols);
    let run = |start: usize| {
        let end = (start + step).min(n_rows);
        // SAFETY: rows [start, end) of every column belong to this task.
        unsafe { gemm_f32_rows(w, n_rows, k, x, cols, start..end, ptr) }
    };
    if n_rows <= step {
        run(0);
    } else {
        (0..n_rows)
            .step_by(step)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(run);
    }
}

/// # Safety
/// Shapes as [`matmul_f32`]; no one else writes rows `rows` of `out`.
unsafe fn gemm_f32_rows(
    w: &[f32],
    n_rows: usize,
    k: usize,
    x: &[f32],
    cols: usize,
    rows: std::ops::Range<usize>,
    ptr: SyncPtr,
) {
    let isa = Isa::detect();
    let tiled = isa.has_avx2() && cols >= 4 && k.is_multiple_of(8);
    let end = rows.end;
    let mut r0 = rows.start;
    #[cfg(target_arch = "x86_64")]
    if tiled {
        // 4 rows x 4 tokens at a time; leftovers below.
        while r0 + 4 <= end {
            let wr = &w[r0 * k..(r0 + 4) * k];
            let mut c = 0;
            while c + 4 <= cols {
                // SAFETY: AVX2/FMA present; 4 rows and 4 columns of k values.
                let tile = super::avx2::dot_f32_4x4(wr, &x[c * k..(c + 4) * k], k);
                for (t, vals) in tile.iter().enumerate() {
                    for (i, v) in vals.iter().enumerate() {
                        *ptr.get().add((c + t) * n_rows + r0 + i) = *v;
                    }
                }
                c += 4;
            }
            for c in c..cols {
                for r in r0..r0 + 4 {
                    let v = super::avx2::dot_f32(&w[r * k..(r + 1) * k], &x[c * k..(c + 1) * k]);
                    *ptr.get().add(c * n_rows + r) = v;
                }
            }
            r0 += 4;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = tiled;
    for r in r0..end {
        let wr = &w[r * k..(r + 1) * k];
        for c in 0..cols {
            let xc = &x[c * k..(c + 1) * k];
            let v = match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 | Isa::Avx512 => super::avx2::dot_f32(wr, xc),
                _ => wr.iter().zip(xc).map(|(a, b)| a * b).sum(),
            };
            *ptr.get().add(c * n_rows + r) = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_blocks(fmt: BlockFormat, n_blocks: usize, rng: &mut impl Rng) -> Vec<u8> {
        let mut out = Vec::with_capacity(n_blocks * fmt.block_bytes());
        for _ in 0..n_blocks {
            out.extend_from_slice(&f16::from_f32(rng.gen_range(0.001..0.05)).to_le_bytes());
            if fmt == BlockFormat::Q4_1 {
                out.extend_from_slice(&f16::from_f32(rng.gen_range(-0.2..0.2)).to_le_bytes());
            }
            let n = if fmt == BlockFormat::Q8_0 { 32 } else { 16 };
            for _ in 0..n {
                out.push(rng.gen());
            }
        }
        out
    }

    fn dequant(fmt: BlockFormat, w: &[u8]) -> Vec<f32> {
        w.chunks_exact(fmt.block_bytes())
            .flat_map(|b| {
                let (d, m, v) = decode_block(fmt, b);
                v.map(|q| d * q as f32 + m)
            })
            .collect()
    }

    /// The SIMD kernels agree with the scalar path, and both agree with an f32
    /// matmul over the dequantized weights, for every tile remainder.
    #[test]
    fn quant_kernels_match_reference() {
        for isa in Isa::ALL {
            if isa.supported() {
                eprintln!("packed kernels: {isa:?} path ran");
            } else {
                eprintln!("packed kernels: {isa:?} path skipped (this CPU does not have it)");
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for fmt in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
            for (n_rows, k, cols) in [
                (1, 32, 1),
                (7, 64, 3),
                (13, 96, 5),
                (64, 576, 2),
                (9, 32, 17),
                (16, 64, 7),
                (8, 32, 70),
                (24, 96, 5),
            ] {
                let w = random_blocks(fmt, n_rows * k / 32, &mut rng);
                let x: Vec<f32> = (0..cols * k).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let mut acts = QuantizedActs::default();
                quantize_acts(&x, cols, k, &mut acts);
                let mut fast = vec![0.0; cols * n_rows];
                matmul_quant(fmt, &w, n_rows, &acts, &mut fast);
                let mut slow = vec![0.0; cols * n_rows];
                gemm_quant_scalar(
                    fmt,
                    &w,
                    n_rows,
                    &acts,
                    0..n_rows,
                    SyncPtr(slow.as_mut_ptr()),
                );
                // The packed layout keeps each row's bytes, and its kernels
                // (SIMD and scalar) compute the same sums.
                let packed = if n_rows % PACK_ROWS == 0 {
                    let p = pack_rows(fmt, &w, n_rows, k / 32);
                    assert_eq!(
                        unpack_rows(fmt, &p, n_rows, k / 32),
                        w,
                        "{fmt:?} pack round trip"
                    );
                    let mut fast = vec![0.0; cols * n_rows];
                    matmul_packed(fmt, &p, n_rows, &acts, &mut fast);
                    // Every other available path gives the same sums too.
                    for isa in Isa::ALL {
                        if !isa.supported() {
                            continue;
                        }
                        let mut other = vec![0.0; cols * n_rows];
                        matmul_packed_isa(isa, fmt, &p, n_rows, &acts, &mut other);
                        for (a, b) in other.iter().zip(&fast) {
                            assert!(
                                (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                                "{fmt:?} {isa:?} {a} vs {b} ({n_rows}x{k}x{cols})"
                            );
                        }
                    }
                    let mut slow = vec![0.0; cols * n_rows];
                    gemm_packed_scalar(
                        fmt,
                        &p,
                        n_rows,
                        &acts,
                        0..n_rows / PACK_ROWS,
                        SyncPtr(slow.as_mut_ptr()),
                    );
                    Some((fast, slow))
                } else {
                    None
                };
                let wf = dequant(fmt, &w);
                let mut exact = vec![0.0; cols * n_rows];
                matmul_f32(&wf, n_rows, k, &x, cols, &mut exact);
                for i in 0..fast.len() {
                    let tol = 1e-4 * (1.0 + slow[i].abs());
                    assert!(
                        (fast[i] - slow[i]).abs() < tol,
                        "{fmt:?} simd {} vs scalar {}",
                        fast[i],
                        slow[i]
                    );
                    if let Some((pf, ps)) = &packed {
                        assert!(
                            (pf[i] - slow[i]).abs() < tol,
                            "{fmt:?} packed simd {} vs scalar {} at {i} ({n_rows}x{k}x{cols})",
                            pf[i],
                            slow[i]
                        );
                        assert_eq!(ps[i], slow[i], "{fmt:?} packed scalar");
                    }
                    // 8-bit activations: error bounded by a few percent of the magnitude.
                    let scale: f32 = (0..k)
                        .map(|j| (wf[(i % n_rows) * k + j] * x[(i / n_rows) * k + j]).abs())
                        .sum();
                    assert!(
                        (slow[i] - exact[i]).abs() <= 0.02 * scale + 1e-3,
                        "{fmt:?} quantized {} vs exact {}",
                        slow[i],
                        exact[i]
                    );
                }
            }
        }
    }

    /// The SIMD activation quantizer gives the scalar one's results exactly,
    /// halfway cases (rounded away from zero) included.
    #[test]
    fn quantize_simd_matches_scalar() {
        if Isa::detect() == Isa::Scalar {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for case in 0..2000 {
            let mut x = [0.0f32; 32];
            match case % 4 {
                // amax 127 makes the scale exactly 1, so x.5 values are ties.
                0 => {
                    for v in x.iter_mut() {
                        *v = rng.gen_range(-127i32..127) as f32 + 0.5;
                    }
                    x[rng.gen_range(0..32)] = if rng.gen() { 127.0 } else { -127.0 };
                }
                1 => {}
                2 => x[rng.gen_range(0..32)] = rng.gen_range(-1e-3..1e-3),
                _ => {
                    for v in x.iter_mut() {
                        *v = rng.gen_range(-3.0..3.0);
                    }
                }
            }
            let (mut a, mut b) = ([0i8; 32], [0i8; 32]);
            let rs = quantize_block_scalar(&x, &mut a);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the ISA check above.
            let rv = unsafe { super::super::avx2::quantize_block(&x, &mut b) };
            #[cfg(not(target_arch = "x86_64"))]
            let rv = quantize_block_scalar(&x, &mut b);
            assert_eq!(rs, rv, "case {case}: {x:?}");
            assert_eq!(a, b, "case {case}: {x:?}");
        }
    }

    #[test]
    fn f32_matmul_matches_naive() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // The last two take the 4x4 AVX2 tiles (k a multiple of 8, 4+ tokens),
        // with leftover rows and tokens.
        for (n, k, cols) in [
            (1, 1, 1),
            (5, 13, 3),
            (33, 100, 4),
            (37, 128, 7),
            (64, 64, 8),
        ] {
            let w: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let x: Vec<f32> = (0..cols * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut out = vec![0.0; n * cols];
            matmul_f32(&w, n, k, &x, cols, &mut out);
            for c in 0..cols {
                for r in 0..n {
                    let e: f32 = (0..k).map(|j| w[r * k + j] * x[c * k + j]).sum();
                    assert!((out[c * n + r] - e).abs() < 1e-4);
                }
            }
        }
    }
}
