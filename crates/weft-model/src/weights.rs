//! Weight matrices in the form the kernels consume, and their products with
//! activations.

use std::sync::Arc;

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::GgmlDType;
use half::{bf16, f16};

use crate::kernels::{self, BlockFormat, PlaneFormat, QuantizedActs};

/// Bytes of a tensor: a slice of a memory-mapped file, or owned memory
/// (8-byte aligned, so quantized blocks can be viewed in place).
#[derive(Clone)]
pub struct Bytes {
    backing: Backing,
    offset: usize,
    len: usize,
}

#[derive(Clone)]
enum Backing {
    Map(Arc<memmap2::Mmap>),
    Owned(Arc<Vec<u64>>),
    /// A whole file read into memory (at least 8-byte aligned: checked).
    Vec(Arc<Vec<u8>>),
}

impl Bytes {
    pub(crate) fn mapped(map: Arc<memmap2::Mmap>, offset: usize, len: usize) -> Self {
        Bytes {
            backing: Backing::Map(map),
            offset,
            len,
        }
    }

    pub fn owned(data: &[u8]) -> Self {
        let mut words = vec![0u64; data.len().div_ceil(8)];
        // SAFETY: `words` has at least `data.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), words.as_mut_ptr() as *mut u8, data.len())
        };
        Bytes {
            backing: Backing::Owned(Arc::new(words)),
            offset: 0,
            len: data.len(),
        }
    }

    /// Takes over a buffer without copying it when its start is 8-byte
    /// aligned (as the system allocator's are), else copies it.
    pub fn from_vec(data: Vec<u8>) -> Self {
        if (data.as_ptr() as usize).is_multiple_of(8) {
            Bytes {
                offset: 0,
                len: data.len(),
                backing: Backing::Vec(Arc::new(data)),
            }
        } else {
            Bytes::owned(&data)
        }
    }

    /// The `len` bytes from `offset` on (relative to this slice), sharing
    /// the backing memory; `None` when they do not lie inside it.
    pub fn slice(&self, offset: usize, len: usize) -> Option<Bytes> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(Bytes {
            backing: self.backing.clone(),
            offset: self.offset + offset,
            len,
        })
    }

    /// Tells the kernel that this slice of a mapped file will not be read
    /// again (the weights were copied into another layout), so its pages
    /// leave the resident set instead of doubling the model's memory. Only
    /// whole pages inside the slice are released; owned bytes are left as
    /// they are. Reading the slice afterwards is still correct: the pages
    /// are read back from the file.
    pub fn release_pages(&self) {
        #[cfg(unix)]
        if let Backing::Map(m) = &self.backing {
            const PAGE: usize = 4096;
            let start = self.offset.div_ceil(PAGE) * PAGE;
            let end = (self.offset + self.len) / PAGE * PAGE;
            if end > start {
                // SAFETY: a read-only private file mapping: dropped pages are
                // re-read from the unchanged file on the next access, so no
                // reader can observe a difference. Errors only cost memory.
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
                };
            }
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        let base: &[u8] = match &self.backing {
            Backing::Map(m) => &m[..],
            Backing::Vec(v) => &v[..],
            // SAFETY: a Vec<u64> viewed as bytes; the length is within it.
            Backing::Owned(v) => unsafe {
                std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 8)
            },
        };
        &base[self.offset..self.offset + self.len]
    }
}

/// Element types weft can load (the GGUF names).
pub fn dtype_name(d: GgmlDType) -> &'static str {
    match d {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// A `rows x cols` matrix (PyTorch's `[out_features, in_features]`).
#[derive(Clone)]
pub enum Weight {
    /// A quantized type with a weft kernel. With `packed`, `data` is in the
    /// row-interleaved layout of [`kernels::pack_rows`], else GGUF row-major.
    Quant {
        fmt: BlockFormat,
        rows: usize,
        cols: usize,
        data: Bytes,
        packed: bool,
    },
    /// `Q5_0`, `Q5_1`, `Q4_K`, `Q5_K` or `Q6_K`, repacked at load into the
    /// bit-plane layout of [`kernels::pack_planes`] (row groups of 8).
    Planes {
        fmt: PlaneFormat,
        rows: usize,
        cols: usize,
        data: Bytes,
    },
    /// Another GGML type (or a plane type whose row count is not a multiple
    /// of 8), multiplied through candle's kernels.
    Ggml {
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        data: Bytes,
    },
    F32 {
        rows: usize,
        cols: usize,
        data: Arc<Vec<f32>>,
    },
}

/// Scratch buffers reused across matmuls, so a step allocates nothing.
#[derive(Default)]
pub struct Scratch {
    pub acts: QuantizedActs,
}

impl Weight {
    /// Wraps raw GGML bytes; F16/BF16/F32 are converted to f32.
    pub fn from_ggml(dtype: GgmlDType, rows: usize, cols: usize, bytes: Bytes) -> Weight {
        match dtype {
            GgmlDType::Q4_0 => Weight::quant(BlockFormat::Q4_0, rows, cols, bytes),
            GgmlDType::Q4_1 => Weight::quant(BlockFormat::Q4_1, rows, cols, bytes),
            GgmlDType::Q8_0 => Weight::quant(BlockFormat::Q8_0, rows, cols, bytes),
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                let data = Arc::new(to_f32(dtype, bytes.as_slice()));
                bytes.release_pages();
                Weight::F32 { rows, cols, data }
            }
            _ => match PlaneFormat::from_ggml(dtype) {
                Some(fmt)
                    if rows.is_multiple_of(kernels::PACK_ROWS)
                        && cols.is_multiple_of(fmt.block_elems())
                        && !std::env::var("WEFT_NO_PACK").is_ok_and(|v| v == "1") =>
                {
                    let data = Bytes::from_vec(kernels::pack_planes(
                        fmt,
                        bytes.as_slice(),
                        rows,
                        cols / fmt.block_elems(),
                    ));
                    bytes.release_pages();
                    Weight::Planes {
                        fmt,
                        rows,
                        cols,
                        data,
                    }
                }
                _ => Weight::Ggml {
                    dtype,
                    rows,
                    cols,
                    data: bytes,
                },
            },
        }
    }

    /// A quantized weight from GGUF row-major blocks, repacked into the
    /// row-interleaved layout when the row count allows it (`WEFT_NO_PACK=1`
    /// keeps the GGUF layout, for comparing speeds).
    fn quant(fmt: BlockFormat, rows: usize, cols: usize, bytes: Bytes) -> Weight {
        let packed = rows.is_multiple_of(kernels::PACK_ROWS)
            && !std::env::var("WEFT_NO_PACK").is_ok_and(|v| v == "1");
        let data = if packed {
            let data = Bytes::from_vec(kernels::pack_rows(
                fmt,
                bytes.as_slice(),
                rows,
                cols / BlockFormat::ELEMS,
            ));
            bytes.release_pages();
            data
        } else {
            bytes
        };
        Weight::Quant {
            fmt,
            rows,
            cols,
            data,
            packed,
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Weight::Quant { rows, .. }
            | Weight::Planes { rows, .. }
            | Weight::Ggml { rows, .. }
            | Weight::F32 { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Weight::Quant { cols, .. }
            | Weight::Planes { cols, .. }
            | Weight::Ggml { cols, .. }
            | Weight::F32 { cols, .. } => *cols,
        }
    }

    /// Bytes the weight's data takes in memory.
    pub fn byte_len(&self) -> usize {
        match self {
            Weight::Quant { data, .. }
            | Weight::Planes { data, .. }
            | Weight::Ggml { data, .. } => data.len(),
            Weight::F32 { data, .. } => data.len() * 4,
        }
    }

    /// A short description of the storage type, for stats and errors.
    pub fn kind(&self) -> String {
        match self {
            Weight::Quant { fmt, .. } => format!("{fmt:?}"),
            Weight::Planes { fmt, .. } => fmt.name().to_string(),
            Weight::Ggml { dtype, .. } => dtype_name(*dtype).to_string(),
            Weight::F32 { .. } => "F32".to_string(),
        }
    }

    /// Stacks matrices with the same storage type and width into one (rows
    /// concatenated), so one pass computes all of them. `None` when they differ.
    pub fn concat_rows(parts: &[&Weight]) -> Option<Weight> {
        let first = parts.first()?;
        let cols = first.cols();
        if parts
            .iter()
            .any(|p| p.cols() != cols || p.kind() != first.kind())
        {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows()).sum();
        match first {
            Weight::F32 { .. } => {
                let mut data = Vec::with_capacity(rows * cols);
                for p in parts {
                    if let Weight::F32 { data: d, .. } = p {
                        data.extend_from_slice(d);
                    }
                }
                Some(Weight::F32 {
                    rows,
                    cols,
                    data: Arc::new(data),
                })
            }
            Weight::Quant { fmt, .. }
                if parts
                    .iter()
                    .all(|p| matches!(p, Weight::Quant { packed: true, .. })) =>
            {
                // Packed layouts are group-major: stacking whole groups of
                // rows is concatenating bytes (no unpacked copy).
                let mut all = Vec::with_capacity(parts.iter().map(|p| p.byte_len()).sum());
                for p in parts {
                    if let Weight::Quant { data, .. } = p {
                        all.extend_from_slice(data.as_slice());
                    }
                }
                Some(Weight::Quant {
                    fmt: *fmt,
                    rows,
                    cols,
                    data: Bytes::from_vec(all),
                    packed: true,
                })
            }
            Weight::Quant { fmt, .. } => {
                let mut all = Vec::new();
                for p in parts {
                    if let Weight::Quant {
                        rows, data, packed, ..
                    } = p
                    {
                        if *packed {
                            all.extend(kernels::unpack_rows(
                                *fmt,
                                data.as_slice(),
                                *rows,
                                cols / BlockFormat::ELEMS,
                            ));
                        } else {
                            all.extend_from_slice(data.as_slice());
                        }
                    }
                }
                Some(Weight::quant(*fmt, rows, cols, Bytes::owned(&all)))
            }
            Weight::Planes { fmt, .. } => {
                // The layout is group-major and every part has whole
                // groups, so stacking rows is concatenating bytes.
                let mut all = Vec::with_capacity(parts.iter().map(|p| p.byte_len()).sum());
                for p in parts {
                    if let Weight::Planes { data, .. } = p {
                        all.extend_from_slice(data.as_slice());
                    }
                }
                Some(Weight::Planes {
                    fmt: *fmt,
                    rows,
                    cols,
                    data: Bytes::from_vec(all),
                })
            }
            Weight::Ggml { dtype, .. } => {
                let bytes = concat_bytes(parts);
                Some(Weight::Ggml {
                    dtype: *dtype,
                    rows,
                    cols,
                    data: bytes,
                })
            }
        }
    }

    /// `out[t * rows + r] = dot(self[r], x[t])` for `t` in `0..tokens`.
    /// `x` holds `tokens` rows of `cols` values.
    pub fn matmul(&self, x: &[f32], tokens: usize, out: &mut [f32], scratch: &mut Scratch) {
        match self {
            Weight::Quant { .. } | Weight::Planes { .. } => {
                kernels::quantize_acts(x, tokens, self.cols(), &mut scratch.acts);
                self.matmul_quantized(&scratch.acts, out);
            }
            Weight::F32 { rows, cols, data } => {
                kernels::matmul_f32(data, *rows, *cols, x, tokens, out)
            }
            Weight::Ggml {
                dtype,
                rows,
                cols,
                data,
            } => ggml_matmul(*dtype, data.as_slice(), *rows, *cols, x, tokens, out),
        }
    }

    /// Whether [`Weight::matmul_quantized`] applies (weft's own 8-bit
    /// activation kernels).
    pub fn takes_quantized_acts(&self) -> bool {
        matches!(self, Weight::Quant { .. } | Weight::Planes { .. })
    }

    /// Like [`Weight::matmul`] for activations already quantized (so several
    /// matrices can share one quantization). Only for `Weight::Quant` and
    /// `Weight::Planes`.
    pub fn matmul_quantized(&self, acts: &QuantizedActs, out: &mut [f32]) {
        if let Weight::Planes {
            fmt, rows, data, ..
        } = self
        {
            kernels::matmul_planes(*fmt, data.as_slice(), *rows, acts, out);
        } else if let Weight::Quant {
            fmt,
            rows,
            data,
            packed,
            ..
        } = self
        {
            if *packed {
                kernels::matmul_packed(*fmt, data.as_slice(), *rows, acts, out);
            } else {
                kernels::matmul_quant(*fmt, data.as_slice(), *rows, acts, out);
            }
        } else {
            unreachable!("matmul_quantized on a non-quantized weight");
        }
    }

    /// Row `r` as f32 (embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let cols = self.cols();
        match self {
            Weight::F32 { data, .. } => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
            Weight::Quant {
                fmt, data, packed, ..
            } => {
                let bb = fmt.block_bytes();
                let kb = cols / BlockFormat::ELEMS;
                let data = data.as_slice();
                for (b, o) in out.chunks_exact_mut(BlockFormat::ELEMS).enumerate() {
                    let (d, m, v) = if *packed {
                        kernels::decode_block(*fmt, &kernels::packed_block(*fmt, data, kb, r, b))
                    } else {
                        kernels::decode_block(*fmt, &data[(r * kb + b) * bb..][..bb])
                    };
                    for (x, q) in o.iter_mut().zip(v) {
                        *x = d * q as f32 + m;
                    }
                }
            }
            Weight::Planes { fmt, data, .. } => kernels::planes_row(*fmt, data.as_slice(), r, out),
            Weight::Ggml { dtype, data, .. } => {
                let row_bytes = cols / dtype.block_size() * dtype.type_size();
                let bytes = &data.as_slice()[r * row_bytes..(r + 1) * row_bytes];
                ggml_dequant(*dtype, bytes, out);
            }
        }
    }
}

fn concat_bytes(parts: &[&Weight]) -> Bytes {
    let mut all = Vec::new();
    for p in parts {
        match p {
            Weight::Ggml { data, .. } => all.extend_from_slice(data.as_slice()),
            Weight::Quant { .. } | Weight::Planes { .. } | Weight::F32 { .. } => {}
        }
    }
    Bytes::owned(&all)
}

/// Converts F32 / F16 / BF16 little-endian bytes to f32.
pub fn to_f32(dtype: GgmlDType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        GgmlDType::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        GgmlDType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

/// Views `bytes` as blocks of `T`, copying only when misaligned.
fn with_blocks<T: GgmlType, R>(bytes: &[u8], f: impl FnOnce(&[T]) -> R) -> R {
    let n = bytes.len() / std::mem::size_of::<T>();
    if (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        // SAFETY: GGML block structs are `repr(C)` plain data of the file's
        // layout; alignment was checked; the length is whole blocks.
        f(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, n) })
    } else {
        let owned = Bytes::owned(bytes);
        // SAFETY: as above; owned bytes are 8-byte aligned.
        f(unsafe { std::slice::from_raw_parts(owned.as_slice().as_ptr() as *const T, n) })
    }
}

macro_rules! ggml_dispatch {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            GgmlDType::Q5_0 => {
                type $T = k_quants::BlockQ5_0;
                $body
            }
            GgmlDType::Q5_1 => {
                type $T = k_quants::BlockQ5_1;
                $body
            }
            GgmlDType::Q2K => {
                type $T = k_quants::BlockQ2K;
                $body
            }
            GgmlDType::Q3K => {
                type $T = k_quants::BlockQ3K;
                $body
            }
            GgmlDType::Q4K => {
                type $T = k_quants::BlockQ4K;
                $body
            }
            GgmlDType::Q5K => {
                type $T = k_quants::BlockQ5K;
                $body
            }
            GgmlDType::Q6K => {
                type $T = k_quants::BlockQ6K;
                $body
            }
            GgmlDType::Q8K => {
                type $T = k_quants::BlockQ8K;
                $body
            }
            GgmlDType::Q4_0 => {
                type $T = k_quants::BlockQ4_0;
                $body
            }
            GgmlDType::Q4_1 => {
                type $T = k_quants::BlockQ4_1;
                $body
            }
            GgmlDType::Q8_0 => {
                type $T = k_quants::BlockQ8_0;
                $body
            }
            GgmlDType::Q8_1 => {
                type $T = k_quants::BlockQ8_1;
                $body
            }
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                unreachable!("float types are converted at load")
            }
        }
    };
}

fn ggml_matmul(
    dtype: GgmlDType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) {
    ggml_dispatch!(dtype, T => with_blocks::<T, _>(w, |blocks| {
        // candle computes dst[m][n] = lhs[m] . rhs_t[n]: m = tokens, n = rows.
        if let Err(e) = k_quants::matmul::<T>((tokens, cols, rows), x, blocks, out) {
            // Shapes are validated at load time; this cannot happen for a loaded model.
            panic!("candle matmul failed on validated shapes: {e}");
        }
    }))
}

fn ggml_dequant(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) {
    ggml_dispatch!(dtype, T => with_blocks::<T, _>(bytes, |blocks| T::to_float(blocks, out)))
}
