//! GGUF files: metadata and tensor infos are parsed by candle's `gguf_file`;
//! tensor bytes are read straight from a memory map, with every range checked
//! against the file's length so a truncated file names the tensor it cut.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::GgmlDType;

use crate::error::{ModelError, Result};
use crate::weights::Bytes;

/// An opened GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub metadata: HashMap<String, Value>,
    tensors: HashMap<String, gguf_file::TensorInfo>,
    data_offset: u64,
    map: Arc<memmap2::Mmap>,
}

/// A tensor's type, shape (outermost first, as in PyTorch) and bytes.
pub struct RawTensor {
    pub dtype: GgmlDType,
    pub dims: Vec<usize>,
    pub bytes: Bytes,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            ModelError::file(
                path,
                format!("not a readable GGUF file (truncated or corrupt header?): {e}"),
            )
        })?;
        // SAFETY: the file is opened read-only; weft does not write model files
        // while they are mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            metadata: content.metadata,
            tensors: content.tensor_infos,
            data_offset: content.tensor_data_offset,
            map: Arc::new(map),
        })
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// Looks up a tensor and checks that its bytes lie inside the file.
    pub fn tensor(&self, name: &str) -> Result<RawTensor> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::tensor(&self.path, name, "missing from the file"))?;
        let dims: Vec<usize> = info.shape.dims().to_vec();
        let elems: usize = dims.iter().product();
        let block = info.ggml_dtype.block_size();
        if elems % block != 0 {
            return Err(ModelError::tensor(
                &self.path,
                name,
                format!(
                    "{elems} elements is not a whole number of {:?} blocks",
                    info.ggml_dtype
                ),
            ));
        }
        let size = elems / block * info.ggml_dtype.type_size();
        let start = self.data_offset as usize + info.offset as usize;
        let end = start + size;
        if end > self.map.len() {
            return Err(ModelError::tensor(
                &self.path,
                name,
                format!(
                    "file is truncated: the tensor needs bytes {start}..{end} but the file has {} bytes",
                    self.map.len()
                ),
            ));
        }
        Ok(RawTensor {
            dtype: info.ggml_dtype,
            dims,
            bytes: Bytes::mapped(self.map.clone(), start, size),
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

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

    pub fn get_f32(&self, key: &str) -> Option<f32> {
        let v = self.get(key)?;
        v.to_f32()
            .ok()
            .or_else(|| v.to_f64().ok().map(|x| x as f32))
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|v| v.to_bool().ok())
    }

    pub fn require_usize(&self, key: &str) -> Result<usize> {
        self.get_usize(key)
            .ok_or_else(|| ModelError::file(&self.path, format!("missing metadata key `{key}`")))
    }

    /// A string-array metadata value.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<String>> {
        let arr = self.get(key)?.to_vec().ok()?;
        arr.iter().map(|v| v.to_string().ok().cloned()).collect()
    }

    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        let arr = self.get(key)?.to_vec().ok()?;
        arr.iter().map(|v| v.to_f32().ok()).collect()
    }

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
