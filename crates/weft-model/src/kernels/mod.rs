//! Hot CPU kernels: quantized and f32 matrix multiplication, and the small
//! vector routines attention needs.
//!
//! Quantized weights (`Q4_0`, `Q4_1`, `Q8_0`) are multiplied the way llama.cpp
//! does it: the activations are quantized once per step to 8-bit blocks of 32
//! ([`QuantizedActs`]), and each weight block is combined with each activation
//! block by integer dot products. The AVX2 kernels work on a tile of 4 weight
//! rows by up to 2 activation columns, so each weight byte is read once per
//! batch rather than once per sequence. The SIMD path is picked at run time
//! ([`Isa::detect`]); the scalar path computes the same sums and is the
//! reference the SIMD kernels are tested against.

mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod decode;
mod quant;

pub use attention::{axpy_f16, dot_f16, f16_to_f32_slice, scores_f16, weighted_sum_f16};
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
}

impl Isa {
    /// The best instruction set this CPU supports. `WEFT_ISA=scalar` forces the
    /// portable path (for testing and for comparing speeds).
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var("WEFT_ISA").is_ok_and(|v| v == "scalar") {
                return Isa::Scalar;
            }
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
                {
                    return Isa::Avx2;
                }
            }
            Isa::Scalar
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
