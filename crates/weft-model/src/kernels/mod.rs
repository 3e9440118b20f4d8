//! Hot CPU kernels: quantized and f32 matrix multiplication, and the small
//! vector routines attention needs.
//!
//! Quantized weights are multiplied the way llama.cpp does it: the
//! activations are quantized once per matmul to 8-bit blocks of 32
//! ([`QuantizedActs`]), and each weight block is combined with each
//! activation block by integer dot products. `Q4_0`, `Q4_1` and `Q8_0` keep
//! their GGUF blocks, interleaved 8 rows at a time ([`pack_rows`]); `Q5_0`,
//! `Q5_1`, `Q4_K`, `Q5_K` and `Q6_K` are repacked into nibble and high-bit
//! planes ([`pack_planes`]). The kernels work on a tile of 8 weight rows (one
//! per 32-bit lane) by up to 4 activation columns, so each weight byte is
//! read once per batch rather than once per sequence. The path is picked at
//! run time ([`Isa::detect`], `WEFT_ISA` forces one): AVX-512 VNNI, AVX2, or
//! the scalar reference, which computes the same sums and which every SIMD
//! path is tested against on every CPU that has it.

mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod decode;
mod planes;
#[cfg(target_arch = "x86_64")]
mod planes_x86;
mod quant;

pub use attention::{
    axpy_f16, dot_f16, f16_to_f32_slice, gather_f16_rows, scores_f16, weighted_sum_f16,
};
pub use planes::{matmul_planes, pack_planes, planes_row, PlaneFormat};
pub(crate) use quant::decode_block;
pub use quant::{
    matmul_f32, matmul_packed, matmul_quant, pack_rows, packed_block, quantize_acts, unpack_rows,
    BlockFormat, QuantizedActs, PACK_ROWS,
};

use std::sync::OnceLock;

/// Which instruction set the kernels run with, chosen once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C (every x86-64 CPU since Haswell / Zen 1).
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL and VNNI (Ice Lake, Zen 4 and later):
    /// the kernels that have a VNNI form use `vpdpbusd`; the rest run as AVX2.
    Avx512,
}

impl Isa {
    /// Every path, from the reference up.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// The name `WEFT_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Whether the AVX2 kernels may run (true for [`Isa::Avx512`] too).
    pub fn has_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512)
    }

    /// The best instruction set this CPU supports, or the one `WEFT_ISA`
    /// (`scalar`, `avx2`, `avx512`) names, for testing and comparing speeds.
    /// A forced path the CPU lacks is refused with a warning on stderr and
    /// the best available one runs instead.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::ALL
                .into_iter()
                .rev()
                .find(|i| i.supported())
                .unwrap_or(Isa::Scalar);
            match std::env::var("WEFT_ISA") {
                Ok(v) if !v.is_empty() => match Isa::ALL.into_iter().find(|i| i.name() == v) {
                    Some(i) if i.supported() => i,
                    Some(i) => {
                        eprintln!(
                            "[weft] WEFT_ISA={v}: this CPU lacks {i:?}; using {}",
                            best.name()
                        );
                        best
                    }
                    None => {
                        eprintln!(
                            "[weft] WEFT_ISA={v} is not one of scalar, avx2, avx512; using {}",
                            best.name()
                        );
                        best
                    }
                },
                _ => best,
            }
        })
    }
}

/// A raw pointer that may be sent to worker threads which write disjoint parts
/// of one output buffer.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub *mut f32);
// SAFETY: users only write disjoint index sets from different threads.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    #[inline]
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
