//! GGUF files: weft's own header reader (`gguf/header.rs`) checks every field
//! before trusting it, as llama.cpp's `gguf.cpp` does, so a hostile file
//! gives an error naming the file and the field; tensor bytes are read
//! straight from a memory map, and every tensor's range is checked against
//! the file's length when it is opened.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;

use crate::error::{ModelError, Result};
use crate::weights::Bytes;

mod header;
mod types;

pub use header::{MAX_DIMS, MAX_TENSOR_NAME};
pub use types::GgmlType;

/// An opened GGUF file: its metadata, its tensor infos, and its bytes.
pub struct GgufFile {
    /// The file's path (or the name given to [`GgufFile::from_bytes`]), for messages.
    pub path: PathBuf,
    /// Every key-value pair, decoded as candle's `gguf_file` decodes them
    /// (strings lose trailing NULs; invalid UTF-8 is replaced).
    pub metadata: HashMap<String, Value>,
    tensors: HashMap<String, TensorInfo>,
    version: u32,
    alignment: usize,
    data_offset: usize,
    bytes: Bytes,
}

/// Where a tensor lies in a GGUF file, as its tensor info says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Shape, outermost first (as in PyTorch; GGUF stores it innermost first).
    pub dims: Vec<usize>,
    /// Its GGML type.
    pub ggml_type: GgmlType,
    /// Byte offset of its data from the start of the data section.
    pub offset: u64,
    /// Size of its data in bytes.
    pub size: usize,
}

/// A tensor's type, shape (outermost first, as in PyTorch) and bytes.
pub struct RawTensor {
    /// Its storage type.
    pub dtype: GgmlDType,
    /// Its shape, outermost first.
    pub dims: Vec<usize>,
    /// Its data: a slice of the file.
    pub bytes: Bytes,
}

impl GgufFile {
    /// Opens and memory-maps a GGUF file (versions 2 and 3).
    ///
    /// Errors: the file cannot be read; or any header field is bad (wrong
    /// magic, unsupported version, counts, keys, value types, alignment,
    /// tensor names, shapes, types, offsets) or a tensor's data lies past
    /// the end of the file: the error names the file and the field.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        if len == 0 {
            return Err(ModelError::file(path, "not a GGUF file: the file is empty"));
        }
        // SAFETY: the file is opened read-only; weft does not write model files
        // while they are mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let len = map.len();
        Self::from_parts(path.to_path_buf(), Bytes::mapped(Arc::new(map), 0, len))
    }

    /// Reads a GGUF file held in memory; `path` only names it in messages.
    /// The same checks and errors as [`GgufFile::open`].
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_parts(path.into(), Bytes::from_vec(bytes))
    }

    fn from_parts(path: PathBuf, bytes: Bytes) -> Result<Self> {
        let h = header::parse(&path, bytes.as_slice())?;
        Ok(GgufFile {
            path,
            metadata: h.metadata,
            tensors: h.tensors,
            version: h.version,
            alignment: h.alignment,
            data_offset: h.data_offset,
            bytes,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment in bytes (`general.alignment`, default 32).
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Whether the file has a tensor of this name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Every tensor's name, in no particular order.
    pub fn tensor_names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// A tensor's info, checked when the file was opened.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// A tensor's type, shape and bytes.
    ///
    /// Errors: no such tensor; or its type is one weft cannot run
    /// ("unsupported tensor type IQ4_NL (type code 20)").
    pub fn tensor(&self, name: &str) -> Result<RawTensor> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::tensor(&self.path, name, "missing from the file"))?;
        let dtype = info.ggml_type.dtype().ok_or_else(|| {
            ModelError::tensor(
                &self.path,
                name,
                format!(
                    "unsupported tensor type {} (type code {}) (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, Q8_K)",
                    info.ggml_type.name, info.ggml_type.code
                ),
            )
        })?;
        // `open` checked that every tensor lies inside the file.
        let bytes = usize::try_from(info.offset)
            .ok()
            .and_then(|o| o.checked_add(self.data_offset))
            .and_then(|start| self.bytes.slice(start, info.size))
            .ok_or_else(|| {
                ModelError::tensor(
                    &self.path,
                    name,
                    "file is truncated: the tensor's data lies past its end",
                )
            })?;
        Ok(RawTensor {
            dtype,
            dims: info.dims.clone(),
            bytes,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A string metadata value; `None` when absent or of another type.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)
            .and_then(|v| v.to_string().ok())
            .map(|s| s.as_str())
    }

    /// An integer metadata value of any integer width.
    pub fn get_usize(&self, key: &str) -> Option<usize> {
        let v = self.get(key)?;
        v.to_u64()
            .ok()
            .or_else(|| v.to_u32().ok().map(u64::from))
            .or_else(|| v.to_i32().ok().and_then(|x| u64::try_from(x).ok()))
            .or_else(|| v.to_i64().ok().and_then(|x| u64::try_from(x).ok()))
            .or_else(|| v.to_u16().ok().map(u64::from))
            .or_else(|| v.to_u8().ok().map(u64::from))
            .map(|x| x as usize)
    }

    /// A float metadata value (f32 or f64).
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        let v = self.get(key)?;
        v.to_f32()
            .ok()
            .or_else(|| v.to_f64().ok().map(|x| x as f32))
    }

    /// A bool metadata value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|v| v.to_bool().ok())
    }

    /// An integer metadata value that must be there.
    ///
    /// Errors: the key is missing or not a non-negative integer.
    pub fn require_usize(&self, key: &str) -> Result<usize> {
        self.get_usize(key)
            .ok_or_else(|| ModelError::file(&self.path, format!("missing metadata key `{key}`")))
    }

    /// A string-array metadata value.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<String>> {
        let arr = self.get(key)?.to_vec().ok()?;
        arr.iter().map(|v| v.to_string().ok().cloned()).collect()
    }

    /// A string-array metadata value, borrowed from the parsed header (no
    /// copy of the strings: a vocabulary is ~100k of them).
    pub fn get_str_slices(&self, key: &str) -> Option<Vec<&str>> {
        let arr = self.get(key)?.to_vec().ok()?;
        arr.iter()
            .map(|v| v.to_string().ok().map(|s| s.as_str()))
            .collect()
    }

    /// An f32-array metadata value.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        let arr = self.get(key)?.to_vec().ok()?;
        arr.iter().map(|v| v.to_f32().ok()).collect()
    }

    /// An i32-array (or u32-array) metadata value.
    pub fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        let arr = self.get(key)?.to_vec().ok()?;
        arr.iter()
            .map(|v| {
                v.to_i32()
                    .ok()
                    .or_else(|| v.to_u32().ok().map(|x| x as i32))
            })
            .collect()
    }
}
