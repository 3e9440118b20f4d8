//! GGUF types with more than 4 bits per weight or per-super-block scales
//! (`Q5_0`, `Q5_1`, `Q4_K`, `Q5_K`, `Q6_K`), repacked at load into one
//! layout of bit planes that a single family of kernels reads.
//!
//! Every one of these types stores, per weight, an unsigned quant `q` of 4,
//! 5 or 6 bits, and per run of 16 or 32 weights a scale and an offset:
//!
//! | type   | GGUF block               | weight                                  |
//! |--------|--------------------------|-----------------------------------------|
//! | `Q5_0` | 32 weights, 22 bytes     | `d * (q - 16)`                          |
//! | `Q5_1` | 32 weights, 24 bytes     | `d * q + m`                             |
//! | `Q4_K` | 256 weights, 144 bytes   | `d * sc[j] * q - dmin * mn[j]` (j: 32s) |
//! | `Q5_K` | 256 weights, 176 bytes   | as `Q4_K`, 5-bit `q`                    |
//! | `Q6_K` | 256 weights, 210 bytes   | `d * sc[h] * (q - 32)` (h: 16s, `sc` i8) |
//!
//! (ggml's `dequantize_row_*` in `ggml-quants.c` is the source of these
//! formulas; the tests check them against candle's independent decoder.)
//!
//! **The packed layout.** Rows come in groups of [`PACK_ROWS`] (= 8); a group
//! stores, GGUF block after GGUF block, a header with the 8 rows' scales,
//! then per 32 weights (a *sub-block*):
//! - 128 bytes of nibbles as 4 vectors of 32 bytes: byte `4r + k` of vector
//!   `v` is row `r`'s nibble byte `4v + k`, whose low nibble is the low 4
//!   bits of weight `4v + k` and whose high nibble those of weight
//!   `16 + 4v + k`. So one vector load gives 4 weights of each of 8 rows.
//!   *Chunk* `c` (0..8) names weights `4c..4c + 4`: the low nibbles of
//!   vector `c` for `c < 4`, the high nibbles of vector `c - 4` after.
//! - for 5-bit types, 32 bytes: bit `c` of byte `4r + k` is bit 4 of weight
//!   `4c + k` of row `r`;
//! - for `Q6_K`, 64 bytes: in the 32-byte plane `p` (0..2), bits `2i, 2i+1`
//!   of byte `4r + k` are bits 4..6 of weight `4(4p + i) + k` of row `r`.
//!
//! Headers (f16 values are the file's bits, so nothing is rounded):
//! - `Q5_0`: `d[8]`; `Q5_1`: `d[8], m[8]`;
//! - `Q4_K`, `Q5_K`: `d[8], dmin[8]` (f16), `sc[8 sub][8 rows]`,
//!   `mn[8 sub][8 rows]` (6-bit values as bytes);
//! - `Q6_K`: `d[8]` (f16), `sc[16 halves][8 rows]` (i8).
//!
//! The layout holds the same information as the file: `Q5_0`, `Q5_1` and
//! `Q6_K` take exactly the file's bytes, `Q4_K` and `Q5_K` 2.8% / 2.3% more
//! (the 6-bit scales unpacked to bytes).

// Index arithmetic over bytes, rows and chunks is the layout itself here.
#![allow(clippy::needless_range_loop)]

use candle_core::quantized::GgmlDType;
use half::f16;

use super::quant::{ActBlock, QuantizedActs, PACK_ROWS};
use super::{Isa, SyncPtr};

/// A GGUF type that [`pack_planes`] repacks and [`matmul_planes`] multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlaneFormat {
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
}

/// One GGUF block decoded into its parts (the form both layouts are
/// converted through). Unused fields stay zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawBlock {
    /// f16 bits of `d`.
    pub d: u16,
    /// f16 bits of `m` (`Q5_1`) or `dmin` (`Q4_K`, `Q5_K`).
    pub m: u16,
    /// Per-sub-block scales (`Q4_K`/`Q5_K`, 8 used) or per-16 scales as i8
    /// bits (`Q6_K`, 16 used).
    pub sc: [u8; 16],
    /// Per-sub-block mins (`Q4_K`/`Q5_K`).
    pub mn: [u8; 8],
    /// The unsigned quants, in weight order (32 or 256 used).
    pub q: [u8; 256],
}

impl Default for RawBlock {
    fn default() -> Self {
        RawBlock {
            d: 0,
            m: 0,
            sc: [0; 16],
            mn: [0; 8],
            q: [0; 256],
        }
    }
}

impl PlaneFormat {
    /// The format for a GGUF type, if it is one of these.
    pub fn from_ggml(d: GgmlDType) -> Option<PlaneFormat> {
        Some(match d {
            GgmlDType::Q5_0 => PlaneFormat::Q5_0,
            GgmlDType::Q5_1 => PlaneFormat::Q5_1,
            GgmlDType::Q4K => PlaneFormat::Q4K,
            GgmlDType::Q5K => PlaneFormat::Q5K,
            GgmlDType::Q6K => PlaneFormat::Q6K,
            _ => return None,
        })
    }

    /// The GGUF name.
    pub fn name(self) -> &'static str {
        match self {
            PlaneFormat::Q5_0 => "Q5_0",
            PlaneFormat::Q5_1 => "Q5_1",
            PlaneFormat::Q4K => "Q4_K",
            PlaneFormat::Q5K => "Q5_K",
            PlaneFormat::Q6K => "Q6_K",
        }
    }

    /// Weights per GGUF block.
    pub const fn block_elems(self) -> usize {
        match self {
            PlaneFormat::Q5_0 | PlaneFormat::Q5_1 => 32,
            _ => 256,
        }
    }

    /// Bytes per GGUF block.
    pub const fn block_bytes(self) -> usize {
        match self {
            PlaneFormat::Q5_0 => 22,
            PlaneFormat::Q5_1 => 24,
            PlaneFormat::Q4K => 144,
            PlaneFormat::Q5K => 176,
            PlaneFormat::Q6K => 210,
        }
    }

    /// Sub-blocks of 32 weights per block.
    pub(crate) const fn subs(self) -> usize {
        self.block_elems() / 32
    }

    /// High bits per weight above the nibble.
    pub(crate) const fn hi_bits(self) -> usize {
        match self {
            PlaneFormat::Q4K => 0,
            PlaneFormat::Q6K => 2,
            _ => 1,
        }
    }

    /// Header bytes of one packed group block.
    pub(crate) const fn header_bytes(self) -> usize {
        match self {
            PlaneFormat::Q5_0 => 16,
            PlaneFormat::Q5_1 => 32,
            PlaneFormat::Q4K | PlaneFormat::Q5K => 32 + 128,
            PlaneFormat::Q6K => 16 + 128,
        }
    }

    /// Packed bytes per sub-block of a group (nibbles + high planes).
    pub(crate) const fn sub_bytes(self) -> usize {
        128 + 32 * self.hi_bits()
    }

    /// Packed bytes of one GGUF block position for a whole group of rows.
    pub const fn group_block_bytes(self) -> usize {
        self.header_bytes() + self.subs() * self.sub_bytes()
    }

    /// Packed size of a `rows x cols` matrix (`rows` a multiple of
    /// [`PACK_ROWS`], `cols` of [`Self::block_elems`]).
    pub const fn packed_len(self, rows: usize, cols: usize) -> usize {
        rows / PACK_ROWS * (cols / self.block_elems()) * self.group_block_bytes()
    }

    /// Decodes one GGUF block (`block_bytes()` bytes).
    pub(crate) fn parse(self, b: &[u8]) -> RawBlock {
        let mut r = RawBlock::default();
        let u16at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        match self {
            PlaneFormat::Q5_0 | PlaneFormat::Q5_1 => {
                r.d = u16at(0);
                let at = if self == PlaneFormat::Q5_1 {
                    r.m = u16at(2);
                    4
                } else {
                    2
                };
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let qs = &b[at + 4..at + 20];
                for i in 0..16 {
                    r.q[i] = (qs[i] & 0xF) | ((((qh >> i) & 1) as u8) << 4);
                    r.q[i + 16] = (qs[i] >> 4) | ((((qh >> (i + 16)) & 1) as u8) << 4);
                }
            }
            PlaneFormat::Q4K | PlaneFormat::Q5K => {
                r.d = u16at(0);
                r.m = u16at(2);
                let scales = &b[4..16];
                for j in 0..8 {
                    let (sc, mn) = scale_min_k4(j, scales);
                    r.sc[j] = sc;
                    r.mn[j] = mn;
                }
                let (qh, qs) = if self == PlaneFormat::Q5K {
                    (Some(&b[16..48]), &b[48..176])
                } else {
                    (None, &b[16..144])
                };
                for j in 0..4 {
                    for l in 0..32 {
                        let byte = qs[32 * j + l];
                        let (h0, h1) = match qh {
                            Some(qh) => ((qh[l] >> (2 * j)) & 1, (qh[l] >> (2 * j + 1)) & 1),
                            None => (0, 0),
                        };
                        r.q[64 * j + l] = (byte & 0xF) | (h0 << 4);
                        r.q[64 * j + 32 + l] = (byte >> 4) | (h1 << 4);
                    }
                }
            }
            PlaneFormat::Q6K => {
                let (ql, qh) = (&b[0..128], &b[128..192]);
                r.sc.copy_from_slice(&b[192..208]);
                r.d = u16at(208);
                for n in 0..2 {
                    let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
                    let q = &mut r.q[128 * n..];
                    for l in 0..32 {
                        q[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                        q[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                        q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
            }
        }
        r
    }

    /// Per 16 weights of a block: `(scale, offset)` with
    /// `weight = scale * q + offset`. Exact in f32: each scale is an f16 times
    /// a small integer.
    pub(crate) fn scales(self, r: &RawBlock) -> [(f32, f32); 16] {
        let d = f16::from_bits(r.d).to_f32();
        let m = f16::from_bits(r.m).to_f32();
        let mut out = [(0.0, 0.0); 16];
        for (h, o) in out.iter_mut().enumerate().take(self.block_elems() / 16) {
            *o = match self {
                PlaneFormat::Q5_0 => (d, -16.0 * d),
                PlaneFormat::Q5_1 => (d, m),
                PlaneFormat::Q4K | PlaneFormat::Q5K => {
                    (d * r.sc[h / 2] as f32, -(m * r.mn[h / 2] as f32))
                }
                PlaneFormat::Q6K => {
                    let s = d * (r.sc[h] as i8) as f32;
                    (s, -32.0 * s)
                }
            };
        }
        out
    }

    /// Dequantizes one GGUF block into `out` (`block_elems()` values).
    #[cfg(test)]
    pub(crate) fn dequant_block(self, b: &[u8], out: &mut [f32]) {
        let r = self.parse(b);
        let s = self.scales(&r);
        for (i, o) in out.iter_mut().enumerate().take(self.block_elems()) {
            let (scale, off) = s[i / 16];
            *o = scale * r.q[i] as f32 + off;
        }
    }

    /// Writes block `b` of row `row` into its group's packed bytes `dst`
    /// (one group block, [`Self::group_block_bytes`] long).
    fn write_packed(self, r: &RawBlock, row: usize, dst: &mut [u8]) {
        dst[2 * row..2 * row + 2].copy_from_slice(&r.d.to_le_bytes());
        match self {
            PlaneFormat::Q5_0 => {}
            PlaneFormat::Q5_1 => {
                dst[16 + 2 * row..18 + 2 * row].copy_from_slice(&r.m.to_le_bytes())
            }
            PlaneFormat::Q4K | PlaneFormat::Q5K => {
                dst[16 + 2 * row..18 + 2 * row].copy_from_slice(&r.m.to_le_bytes());
                for j in 0..8 {
                    dst[32 + 8 * j + row] = r.sc[j];
                    dst[96 + 8 * j + row] = r.mn[j];
                }
            }
            PlaneFormat::Q6K => {
                for h in 0..16 {
                    dst[16 + 8 * h + row] = r.sc[h];
                }
            }
        }
        for j in 0..self.subs() {
            let sub = &mut dst[self.header_bytes() + j * self.sub_bytes()..][..self.sub_bytes()];
            let q = &r.q[32 * j..32 * j + 32];
            for i in 0..16 {
                sub[32 * (i / 4) + 4 * row + i % 4] = (q[i] & 0xF) | ((q[i + 16] & 0xF) << 4);
            }
            for c in 0..8 {
                for k in 0..4 {
                    let hi = q[4 * c + k] >> 4;
                    let at = 4 * row + k;
                    match self.hi_bits() {
                        1 => sub[128 + at] |= (hi & 1) << c,
                        2 => sub[128 + 32 * (c / 4) + at] |= (hi & 3) << (2 * (c % 4)),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Reads block `b` of row `row` back from its group's packed bytes.
    pub(crate) fn read_packed(self, src: &[u8], row: usize) -> RawBlock {
        let mut r = RawBlock {
            d: u16::from_le_bytes([src[2 * row], src[2 * row + 1]]),
            ..RawBlock::default()
        };
        match self {
            PlaneFormat::Q5_0 => {}
            PlaneFormat::Q5_1 | PlaneFormat::Q4K | PlaneFormat::Q5K => {
                r.m = u16::from_le_bytes([src[16 + 2 * row], src[17 + 2 * row]]);
                if self != PlaneFormat::Q5_1 {
                    for j in 0..8 {
                        r.sc[j] = src[32 + 8 * j + row];
                        r.mn[j] = src[96 + 8 * j + row];
                    }
                }
            }
            PlaneFormat::Q6K => {
                for h in 0..16 {
                    r.sc[h] = src[16 + 8 * h + row];
                }
            }
        }
        for j in 0..self.subs() {
            let sub = &src[self.header_bytes() + j * self.sub_bytes()..][..self.sub_bytes()];
            let q = &mut r.q[32 * j..32 * j + 32];
            for i in 0..16 {
                let byte = sub[32 * (i / 4) + 4 * row + i % 4];
                q[i] = byte & 0xF;
                q[i + 16] = byte >> 4;
            }
            for c in 0..8 {
                for k in 0..4 {
                    let at = 4 * row + k;
                    let hi = match self.hi_bits() {
                        1 => (sub[128 + at] >> c) & 1,
                        2 => (sub[128 + 32 * (c / 4) + at] >> (2 * (c % 4))) & 3,
                        _ => 0,
                    };
                    q[4 * c + k] |= hi << 4;
                }
            }
        }
        r
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from
/// the 12 packed scale bytes of a `Q4_K` / `Q5_K` block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Repacks a GGUF matrix (`rows` rows of `n_blocks` blocks, `rows` a
/// multiple of [`PACK_ROWS`]) into the plane layout of this module.
///
/// # Panics
/// When the shapes do not match `data` (callers check them at load).
pub fn pack_planes(fmt: PlaneFormat, data: &[u8], rows: usize, n_blocks: usize) -> Vec<u8> {
    let bb = fmt.block_bytes();
    assert_eq!(rows % PACK_ROWS, 0, "packed rows");
    assert_eq!(data.len(), rows * n_blocks * bb, "weight shape");
    let gbb = fmt.group_block_bytes();
    let mut out = vec![0u8; rows / PACK_ROWS * n_blocks * gbb];
    for r in 0..rows {
        let (g, i) = (r / PACK_ROWS, r % PACK_ROWS);
        for b in 0..n_blocks {
            let raw = fmt.parse(&data[(r * n_blocks + b) * bb..][..bb]);
            fmt.write_packed(&raw, i, &mut out[(g * n_blocks + b) * gbb..][..gbb]);
        }
    }
    out
}

/// Block `b` of row `r` of a packed matrix, decoded.
pub(crate) fn packed_raw(
    fmt: PlaneFormat,
    data: &[u8],
    n_blocks: usize,
    r: usize,
    b: usize,
) -> RawBlock {
    let gbb = fmt.group_block_bytes();
    let (g, i) = (r / PACK_ROWS, r % PACK_ROWS);
    fmt.read_packed(&data[(g * n_blocks + b) * gbb..][..gbb], i)
}

/// Row `r` of a packed matrix as f32 (`out.len()` = the row's weights).
pub fn planes_row(fmt: PlaneFormat, data: &[u8], r: usize, out: &mut [f32]) {
    let n_blocks = out.len() / fmt.block_elems();
    for (b, o) in out.chunks_exact_mut(fmt.block_elems()).enumerate() {
        let raw = packed_raw(fmt, data, n_blocks, r, b);
        let s = fmt.scales(&raw);
        for (i, v) in o.iter_mut().enumerate() {
            let (scale, off) = s[i / 16];
            *v = scale * raw.q[i] as f32 + off;
        }
    }
}

/// `out[c * n_rows + r] = dot(w[r], x[c])` for a packed matrix `w`
/// ([`pack_planes`]) and quantized activations. Row groups are split
/// across the rayon pool.
///
/// # Panics
/// When `w`, `acts` and `out` disagree on the shape.
pub fn matmul_planes(
    fmt: PlaneFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    out: &mut [f32],
) {
    matmul_planes_isa(Isa::detect(), fmt, w, n_rows, acts, out)
}

/// [`matmul_planes`] on a given instruction set (which the CPU must have).
pub(crate) fn matmul_planes_isa(
    isa: Isa,
    fmt: PlaneFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    out: &mut [f32],
) {
    let k = acts.k_blocks * 32;
    assert_eq!(n_rows % PACK_ROWS, 0, "packed rows");
    assert_eq!(k % fmt.block_elems(), 0, "row length");
    assert_eq!(w.len(), fmt.packed_len(n_rows, k), "weight shape");
    assert_eq!(out.len(), acts.cols * n_rows, "output shape");
    assert!(isa.supported(), "{isa:?} is not available on this CPU");
    let ptr = SyncPtr(out.as_mut_ptr());
    let groups = n_rows / PACK_ROWS;
    let threads = rayon::current_num_threads().max(1);
    let work = w.len() * acts.cols.max(1);
    let n_tasks = (work / (64 * 1024)).clamp(1, threads * 2).min(groups);
    super::quant::split_par(groups, n_tasks, |g| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is supported (asserted); the rows of groups `g` are this task's alone.
        Isa::Avx2 => unsafe { super::planes_x86::gemm_avx2(fmt, w, n_rows, acts, g, ptr) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx512 => unsafe { super::planes_x86::gemm_avx512(fmt, w, n_rows, acts, g, ptr) },
        _ => gemm_planes_scalar(fmt, w, n_rows, acts, g, ptr),
    });
}

/// The reference kernel: the same sums as the SIMD kernels, one weight at a
/// time, read through [`PlaneFormat::read_packed`].
fn gemm_planes_scalar(
    fmt: PlaneFormat,
    w: &[u8],
    n_rows: usize,
    acts: &QuantizedActs,
    groups: std::ops::Range<usize>,
    out: SyncPtr,
) {
    let n_blocks = acts.k_blocks * 32 / fmt.block_elems();
    for r in groups.start * PACK_ROWS..groups.end * PACK_ROWS {
        let blocks: Vec<_> = (0..n_blocks)
            .map(|b| packed_raw(fmt, w, n_blocks, r, b))
            .collect();
        for c in 0..acts.cols {
            let xs = acts.col(c);
            let mut acc = 0.0f32;
            for (b, raw) in blocks.iter().enumerate() {
                let s = fmt.scales(raw);
                for j in 0..fmt.subs() {
                    let x: &ActBlock = &xs[b * fmt.subs() + j];
                    acc += sub_dot(fmt, raw, &s, j, x);
                }
            }
            // SAFETY: (c, r) is written by this task only; the index is in bounds.
            unsafe { *out.0.add(c * n_rows + r) = acc };
        }
    }
}

/// One sub-block's contribution, as the SIMD kernels compute it: integer
/// sums per half of 16, scaled; the offset through the activation sum.
fn sub_dot(fmt: PlaneFormat, raw: &RawBlock, s: &[(f32, f32); 16], j: usize, x: &ActBlock) -> f32 {
    let q = &raw.q[32 * j..32 * j + 32];
    let half = |h: usize| -> i32 {
        (16 * h..16 * h + 16)
            .map(|i| q[i] as i32 * x.qs[i] as i32)
            .sum()
    };
    if fmt == PlaneFormat::Q6K {
        // Exact integer offset: (q - 32) . x per half.
        let d = f16::from_bits(raw.d).to_f32();
        let t: i32 = (0..2)
            .map(|h| (raw.sc[2 * j + h] as i8) as i32 * (half(h) - 32 * x.hs[h] as i32))
            .sum();
        t as f32 * (d * x.d)
    } else {
        let (scale, off) = s[2 * j];
        (half(0) + half(1)) as f32 * (scale * x.d) + off * x.s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::quantize_acts;
    use candle_core::quantized::k_quants::{self, GgmlType};
    use rand::{Rng, SeedableRng};

    const ALL: [PlaneFormat; 5] = [
        PlaneFormat::Q5_0,
        PlaneFormat::Q5_1,
        PlaneFormat::Q4K,
        PlaneFormat::Q5K,
        PlaneFormat::Q6K,
    ];

    /// Random blocks with realistic scales: every quant bit pattern occurs.
    pub(crate) fn random_blocks(fmt: PlaneFormat, n: usize, rng: &mut impl Rng) -> Vec<u8> {
        let mut out = Vec::with_capacity(n * fmt.block_bytes());
        let h = |rng: &mut dyn rand::RngCore, lo: f32, hi: f32| {
            f16::from_f32(rng.gen_range(lo..hi)).to_le_bytes()
        };
        for _ in 0..n {
            let mut b: Vec<u8> = (0..fmt.block_bytes()).map(|_| rng.gen()).collect();
            match fmt {
                PlaneFormat::Q5_0 => b[0..2].copy_from_slice(&h(rng, 0.001, 0.05)),
                PlaneFormat::Q5_1 => {
                    b[0..2].copy_from_slice(&h(rng, 0.001, 0.05));
                    b[2..4].copy_from_slice(&h(rng, -0.3, 0.3));
                }
                PlaneFormat::Q4K | PlaneFormat::Q5K => {
                    b[0..2].copy_from_slice(&h(rng, 0.0001, 0.002));
                    b[2..4].copy_from_slice(&h(rng, 0.0001, 0.005));
                }
                PlaneFormat::Q6K => b[208..210].copy_from_slice(&h(rng, 0.0001, 0.002)),
            }
            out.extend_from_slice(&b);
        }
        out
    }

    /// candle's decoder (a port of ggml's) for the same bytes.
    fn candle_dequant(fmt: PlaneFormat, bytes: &[u8]) -> Vec<f32> {
        fn go<T: GgmlType>(bytes: &[u8], n: usize) -> Vec<f32> {
            let blocks: Vec<T> = bytes
                .chunks_exact(std::mem::size_of::<T>())
                // SAFETY: ggml blocks are plain `repr(C)` data of the file layout.
                .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr() as *const T) })
                .collect();
            let mut out = vec![0.0; n];
            T::to_float(&blocks, &mut out);
            out
        }
        let n = bytes.len() / fmt.block_bytes() * fmt.block_elems();
        match fmt {
            PlaneFormat::Q5_0 => go::<k_quants::BlockQ5_0>(bytes, n),
            PlaneFormat::Q5_1 => go::<k_quants::BlockQ5_1>(bytes, n),
            PlaneFormat::Q4K => go::<k_quants::BlockQ4K>(bytes, n),
            PlaneFormat::Q5K => go::<k_quants::BlockQ5K>(bytes, n),
            PlaneFormat::Q6K => go::<k_quants::BlockQ6K>(bytes, n),
        }
    }

    /// The formulas above decode exactly what ggml (through candle) decodes,
    /// and the packed layout keeps every bit.
    #[test]
    fn decode_matches_candle_and_packing_round_trips() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for fmt in ALL {
            let (rows, n_blocks) = (16, 3);
            let data = random_blocks(fmt, rows * n_blocks, &mut rng);
            let reference = candle_dequant(fmt, &data);
            let mut ours = vec![0.0; reference.len()];
            for (b, o) in data
                .chunks_exact(fmt.block_bytes())
                .zip(ours.chunks_exact_mut(fmt.block_elems()))
            {
                fmt.dequant_block(b, o);
            }
            assert_eq!(ours, reference, "{fmt:?} decode");
            let packed = pack_planes(fmt, &data, rows, n_blocks);
            assert_eq!(
                packed.len(),
                fmt.packed_len(rows, n_blocks * fmt.block_elems())
            );
            for r in 0..rows {
                for b in 0..n_blocks {
                    let bb = fmt.block_bytes();
                    let want = fmt.parse(&data[(r * n_blocks + b) * bb..][..bb]);
                    assert_eq!(packed_raw(fmt, &packed, n_blocks, r, b), want, "{fmt:?}");
                }
                let k = n_blocks * fmt.block_elems();
                let mut row = vec![0.0; k];
                planes_row(fmt, &packed, r, &mut row);
                assert_eq!(row, reference[r * k..(r + 1) * k], "{fmt:?} row {r}");
            }
        }
    }

    /// Every instruction-set path gives the scalar path's sums, and the
    /// scalar path agrees with f32 math on the dequantized weights, for
    /// every tile remainder (1..=5 columns and more than a column chunk).
    #[test]
    fn plane_kernels_match_reference_on_every_isa() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for isa in Isa::ALL {
            if isa.supported() {
                eprintln!("plane kernels: {isa:?} path ran");
            } else {
                eprintln!("plane kernels: {isa:?} path skipped (this CPU does not have it)");
            }
        }
        for fmt in ALL {
            for (n_rows, n_blocks, cols) in [
                (8, 1, 1),
                (16, 2, 3),
                (24, 3, 5),
                (8, 1, 70),
                (32, 2, 2),
                (8, 3, 4),
            ] {
                let k = n_blocks * fmt.block_elems();
                let data = random_blocks(fmt, n_rows * n_blocks, &mut rng);
                let packed = pack_planes(fmt, &data, n_rows, n_blocks);
                let x: Vec<f32> = (0..cols * k).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let mut acts = QuantizedActs::default();
                quantize_acts(&x, cols, k, &mut acts);
                let mut slow = vec![0.0; cols * n_rows];
                matmul_planes_isa(Isa::Scalar, fmt, &packed, n_rows, &acts, &mut slow);
                let wf = candle_dequant(fmt, &data);
                let mut exact = vec![0.0; cols * n_rows];
                super::super::quant::matmul_f32(&wf, n_rows, k, &x, cols, &mut exact);
                for i in 0..slow.len() {
                    let scale: f32 = (0..k)
                        .map(|j| (wf[(i % n_rows) * k + j] * x[(i / n_rows) * k + j]).abs())
                        .sum();
                    assert!(
                        (slow[i] - exact[i]).abs() <= 0.02 * scale + 1e-4,
                        "{fmt:?} quantized {} vs exact {}",
                        slow[i],
                        exact[i]
                    );
                }
                for isa in Isa::ALL {
                    if isa == Isa::Scalar || !isa.supported() {
                        continue;
                    }
                    let mut fast = vec![0.0; cols * n_rows];
                    matmul_planes_isa(isa, fmt, &packed, n_rows, &acts, &mut fast);
                    for i in 0..fast.len() {
                        let tol = 1e-4 * (1.0 + slow[i].abs());
                        assert!(
                            (fast[i] - slow[i]).abs() < tol,
                            "{fmt:?} {isa:?} {} vs scalar {} at {i} ({n_rows}x{k}x{cols})",
                            fast[i],
                            slow[i]
                        );
                    }
                }
            }
        }
    }
}
