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
            let bytes = std::fs::read(path).unwrap_or_default();
            diagnose_header(path, &bytes)
                .unwrap_or_else(|| ModelError::file(path, format!("not a readable GGUF file: {e}")))
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
        if !elems.is_multiple_of(block) {
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

/// GGML type codes weft can run (see ggml.h `enum ggml_type`).
fn supported_type(code: u32) -> bool {
    matches!(
        code,
        0 | 1 | 2 | 3 | 6 | 7 | 8 | 10 | 11 | 12 | 13 | 14 | 15 | 30
    )
}

fn type_name(code: u32) -> String {
    let name = match code {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "",
    };
    if name.is_empty() {
        format!("type code {code}")
    } else {
        format!("{name} (type code {code})")
    }
}

/// Walks a GGUF header that candle refused, to say precisely what is wrong:
/// where a truncated header ends, or which tensor has a type weft cannot run.
fn diagnose_header(path: &Path, b: &[u8]) -> Option<ModelError> {
    struct Cursor<'a>(&'a [u8], usize);
    impl Cursor<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            let s = self.0.get(self.1..self.1.checked_add(n)?)?;
            self.1 += n;
            Some(s)
        }
        fn u32(&mut self) -> Option<u32> {
            self.take(4)
                .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
        }
        fn u64(&mut self) -> Option<u64> {
            self.take(8)
                .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
        }
        fn string(&mut self) -> Option<String> {
            let n = self.u64()? as usize;
            self.take(n)
                .map(|s| String::from_utf8_lossy(s).into_owned())
        }
        fn skip_value(&mut self, ty: u32) -> Option<()> {
            let size = match ty {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                10..=12 => 8,
                8 => {
                    self.string()?;
                    return Some(());
                }
                9 => {
                    let inner = self.u32()?;
                    let n = self.u64()?;
                    for _ in 0..n {
                        self.skip_value(inner)?;
                    }
                    return Some(());
                }
                _ => return None,
            };
            self.take(size).map(|_| ())
        }
    }
    let truncated = |what: String| {
        Some(ModelError::file(
            path,
            format!("file is truncated or corrupt in the header: {what}"),
        ))
    };
    let mut c = Cursor(b, 0);
    if c.take(4)? != b"GGUF" {
        return Some(ModelError::file(path, "not a GGUF file (bad magic bytes)"));
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Some(ModelError::file(
            path,
            format!("unsupported GGUF version {version} (supported: 2, 3)"),
        ));
    }
    let (Some(n_tensors), Some(n_kv)) = (c.u64(), c.u64()) else {
        return truncated("counts".into());
    };
    for i in 0..n_kv {
        let Some(key) = c.string() else {
            return truncated(format!("metadata entry {i} of {n_kv}"));
        };
        let ok = c.u32().and_then(|ty| c.skip_value(ty));
        if ok.is_none() {
            return truncated(format!("metadata value `{key}`"));
        }
    }
    for i in 0..n_tensors {
        let Some(name) = c.string() else {
            return truncated(format!("tensor info {i} of {n_tensors}"));
        };
        let dims = c
            .u32()
            .and_then(|n| (0..n).map(|_| c.u64()).collect::<Option<Vec<u64>>>());
        let (Some(_dims), Some(ty), Some(_offset)) = (dims, c.u32(), c.u64()) else {
            return truncated(format!("tensor info of `{name}`"));
        };
        if !supported_type(ty) {
            return Some(ModelError::tensor(
                path,
                name,
                format!(
                    "unsupported tensor type {} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, Q8_K)",
                    type_name(ty)
                ),
            ));
        }
    }
    None
}
