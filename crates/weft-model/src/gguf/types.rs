//! GGML tensor types as GGUF files name them by code: the table of
//! `type_traits` in llama.cpp's `ggml/src/ggml.c` (llama-cpp-python 0.3.36),
//! with block sizes and block byte sizes from `ggml-common.h`.

use candle_core::quantized::GgmlDType;

/// One GGML tensor type: its code in `enum ggml_type` (ggml.h), its name,
/// and its storage: `block_size` elements take `type_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType {
    /// The code GGUF tensor infos store.
    pub code: u32,
    /// GGML's name, upper case as weft prints it (`Q4_1`, `IQ4_NL`).
    pub name: &'static str,
    /// Elements per block.
    pub block_size: usize,
    /// Bytes per block.
    pub type_size: usize,
}

const fn t(code: u32, name: &'static str, block_size: usize, type_size: usize) -> GgmlType {
    GgmlType {
        code,
        name,
        block_size,
        type_size,
    }
}

/// Every type a GGUF file may hold. Codes 4, 5, 31-33 and 36-38 were
/// removed from GGML (llama.cpp gives them block size 0 and refuses them).
const TYPES: &[GgmlType] = &[
    t(0, "F32", 1, 4),
    t(1, "F16", 1, 2),
    t(2, "Q4_0", 32, 18),
    t(3, "Q4_1", 32, 20),
    t(6, "Q5_0", 32, 22),
    t(7, "Q5_1", 32, 24),
    t(8, "Q8_0", 32, 34),
    t(9, "Q8_1", 32, 36),
    t(10, "Q2_K", 256, 84),
    t(11, "Q3_K", 256, 110),
    t(12, "Q4_K", 256, 144),
    t(13, "Q5_K", 256, 176),
    t(14, "Q6_K", 256, 210),
    t(15, "Q8_K", 256, 292),
    t(16, "IQ2_XXS", 256, 66),
    t(17, "IQ2_XS", 256, 74),
    t(18, "IQ3_XXS", 256, 98),
    t(19, "IQ1_S", 256, 50),
    t(20, "IQ4_NL", 32, 18),
    t(21, "IQ3_S", 256, 110),
    t(22, "IQ2_S", 256, 82),
    t(23, "IQ4_XS", 256, 136),
    t(24, "I8", 1, 1),
    t(25, "I16", 1, 2),
    t(26, "I32", 1, 4),
    t(27, "I64", 1, 8),
    t(28, "F64", 1, 8),
    t(29, "IQ1_M", 256, 56),
    t(30, "BF16", 1, 2),
    t(34, "TQ1_0", 256, 54),
    t(35, "TQ2_0", 256, 66),
    t(39, "MXFP4", 32, 17),
    t(40, "NVFP4", 64, 36),
    t(41, "Q1_0", 128, 18),
    t(42, "Q2_0", 64, 18),
];

impl GgmlType {
    /// The type with this code; `None` for codes GGML does not define.
    pub fn from_code(code: u32) -> Option<GgmlType> {
        TYPES.iter().copied().find(|t| t.code == code)
    }

    /// The candle type weft loads it as; `None` for types weft cannot run.
    pub fn dtype(self) -> Option<GgmlDType> {
        Some(match self.code {
            0 => GgmlDType::F32,
            1 => GgmlDType::F16,
            2 => GgmlDType::Q4_0,
            3 => GgmlDType::Q4_1,
            6 => GgmlDType::Q5_0,
            7 => GgmlDType::Q5_1,
            8 => GgmlDType::Q8_0,
            9 => GgmlDType::Q8_1,
            10 => GgmlDType::Q2K,
            11 => GgmlDType::Q3K,
            12 => GgmlDType::Q4K,
            13 => GgmlDType::Q5K,
            14 => GgmlDType::Q6K,
            15 => GgmlDType::Q8K,
            30 => GgmlDType::BF16,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_agree_with_candle() {
        for t in TYPES {
            if let Some(d) = t.dtype() {
                assert_eq!(
                    (t.block_size, t.type_size),
                    (d.block_size(), d.type_size()),
                    "{}",
                    t.name
                );
                assert_eq!(crate::weights::dtype_name(d), t.name);
            }
        }
    }
}
