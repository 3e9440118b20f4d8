//! weft's GGUF header reader. It reads from the file's bytes (a memory map)
//! and checks every field before it trusts it, as llama.cpp's
//! `gguf_init_from_reader` (`ggml/src/gguf.cpp`) does, so a hostile file
//! gives an error naming the file, the field and the reason, never a panic.
//!
//! Layout (little-endian; GGUF v2 and v3, which differ only in allowing
//! big-endian files, which weft does not read):
//! magic `GGUF`, version u32, n_tensors u64, n_kv u64; n_kv key-value pairs
//! (key: u64 length + bytes, value type u32, value; an array is an element
//! type u32, a count u64 and the elements); n_tensors tensor infos (name,
//! n_dims u32, n_dims u64 dimensions innermost first, GGML type u32, data
//! offset u64); then, at the next multiple of `general.alignment` (u32,
//! default 32), the data section, each tensor at its offset.
//!
//! Nothing is allocated from a count before the bytes it promises are known
//! to be in the file, and values are decoded only once the whole header and
//! the data section's extent are known to be sound.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use super::types::GgmlType;
use super::TensorInfo;
use crate::error::{ModelError, Result};

/// `GGML_MAX_NAME` (ggml.h): a tensor name is shorter than this, in bytes.
pub const MAX_TENSOR_NAME: usize = 64;
/// `GGML_MAX_DIMS` (ggml.h).
pub const MAX_DIMS: u32 = 4;
/// `GGUF_MAX_STRING_LENGTH` (gguf.cpp), in bytes.
const MAX_STRING_LEN: u64 = 1 << 30;
/// `GGUF_MAX_ARRAY_ELEMENTS` (gguf.cpp).
const MAX_ARRAY_LEN: u64 = 1 << 30;
/// `GGUF_DEFAULT_ALIGNMENT` (gguf.h), in bytes.
const DEFAULT_ALIGNMENT: u32 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";
/// The fewest bytes a key-value pair takes: key length, one key byte,
/// value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// The fewest bytes a tensor info takes: name length, one name byte,
/// n_dims, one dimension, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 8 + 4 + 8;

/// A parsed header: what `GgufFile` keeps.
pub(crate) struct Header {
    pub version: u32,
    pub alignment: usize,
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorInfo>,
    /// Where the data section starts, in bytes from the start of the file.
    pub data_offset: usize,
}

/// GGUF value types (`enum gguf_type`, gguf.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    Str,
    Array,
    U64,
    I64,
    F64,
}

impl Kind {
    fn from_code(code: u32) -> Option<Kind> {
        use Kind::*;
        Some(match code {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => Str,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// gguf.cpp's names.
    fn name(self) -> &'static str {
        use Kind::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            Str => "str",
            Array => "arr",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Bytes of one value; for a string, its length prefix (the least it takes).
    fn min_size(self) -> u64 {
        use Kind::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | Str => 8,
            Array => 4 + 8,
        }
    }
}

/// Which part of the header an error is about.
#[derive(Clone, Copy)]
enum Field<'a> {
    /// A fixed header field: `version`, `n_tensors`, `n_kv`.
    Header(&'static str),
    /// The key-value pair at this index, before its key is known.
    Entry(u64),
    Key(&'a str),
    /// The tensor info at this index, before its name is known.
    TensorEntry(u64),
    Tensor(&'a str),
}

/// A key-value pair located but not yet decoded.
struct RawKv {
    key: String,
    kind: Kind,
    /// Offset of the value (for arrays: of the element type).
    at: usize,
}

struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn fail(&self, field: Field, reason: impl Into<String>) -> ModelError {
        let reason = reason.into();
        match field {
            Field::Header(name) => {
                ModelError::file(self.path, format!("GGUF header field `{name}`: {reason}"))
            }
            Field::Entry(i) => ModelError::file(self.path, format!("metadata entry {i}: {reason}")),
            Field::Key(key) => ModelError::file(
                self.path,
                format!("metadata key `{}`: {reason}", shown(key)),
            ),
            Field::TensorEntry(i) => {
                ModelError::file(self.path, format!("tensor info {i}: {reason}"))
            }
            Field::Tensor(name) => ModelError::tensor(self.path, shown(name), reason),
        }
    }

    fn take(&mut self, n: u64, field: Field, what: &str) -> Result<&'a [u8]> {
        let left = self.left();
        if n > left as u64 {
            return Err(self.fail(
                field,
                format!(
                    "file is truncated or corrupt in the header: {what} needs {n} bytes at byte {}, but only {left} are left",
                    self.pos
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: Field, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, field, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, field: Field, what: &str) -> Result<u32> {
        self.array(field, what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: Field, what: &str) -> Result<u64> {
        self.array(field, what).map(u64::from_le_bytes)
    }

    /// A length-prefixed string's bytes.
    fn string(&mut self, field: Field, what: &str) -> Result<&'a [u8]> {
        let len = self.u64(field, what)?;
        if len > MAX_STRING_LEN {
            return Err(self.fail(
                field,
                format!("{what} has length {len}, over GGUF's limit of {MAX_STRING_LEN} bytes"),
            ));
        }
        self.take(len, field, what)
    }
}

/// A key or tensor name as an error shows it: control characters escaped
/// (a hostile name cannot drive the terminal), backticks too (it cannot end
/// the quotes around it).
fn shown(name: &str) -> String {
    name.escape_debug().to_string().replace('`', "\\`")
}

/// GGUF strings as candle reads them: trailing NULs dropped (writers leave
/// them in practice), invalid UTF-8 replaced.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Checks a whole GGUF header (and that every tensor's bytes lie in `bytes`)
/// and returns it. Errors name `path` and the field.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Header> {
    let mut r = Reader {
        path,
        bytes,
        pos: 0,
    };
    if bytes.len() < 4 || &bytes[..4] != b"GGUF" {
        let start = &bytes[..bytes.len().min(4)];
        return Err(ModelError::file(
            path,
            format!(
                "not a GGUF file: it starts with {:?}, not the magic bytes \"GGUF\"",
                String::from_utf8_lossy(start)
            ),
        ));
    }
    r.pos = 4;
    let version = r.u32(Field::Header("version"), "the version")?;
    check_version(&r, version)?;
    let n_tensors = r.u64(Field::Header("n_tensors"), "the tensor count")?;
    let n_kv = r.u64(Field::Header("n_kv"), "the key-value count")?;
    check_counts(&r, n_tensors, n_kv)?;

    let (raw, alignment) = read_kvs(&mut r, n_kv)?;
    let alignment = alignment as usize;
    let infos = read_tensor_infos(&mut r, n_tensors, alignment)?;

    let data_offset = if infos.is_empty() {
        r.pos
    } else {
        let start = r
            .pos
            .checked_next_multiple_of(alignment)
            .filter(|&s| s <= bytes.len())
            .ok_or_else(|| {
                ModelError::file(
                    path,
                    format!(
                        "file is truncated: the header ends at byte {}, and the data section would start at the next multiple of {alignment}, past the end of the file ({} bytes)",
                        r.pos,
                        bytes.len()
                    ),
                )
            })?;
        start
    };
    for (name, info) in &infos {
        let fits = data_offset
            .checked_add(info.offset as usize)
            .and_then(|start| Some((start, start.checked_add(info.size)?)));
        match fits {
            Some((_, end)) if end <= bytes.len() => {}
            _ => {
                let start = data_offset as u128 + info.offset as u128;
                return Err(ModelError::tensor(
                    path,
                    shown(name),
                    format!(
                        "file is truncated: the tensor needs bytes {start}..{} but the file has {} bytes",
                        start + info.size as u128,
                        bytes.len()
                    ),
                ));
            }
        }
    }

    let mut metadata = HashMap::with_capacity(raw.len());
    for kv in raw {
        let mut at = Reader {
            path,
            bytes,
            pos: kv.at,
        };
        let value = decode(&mut at, kv.kind, Field::Key(&kv.key))?;
        metadata.insert(kv.key, value);
    }
    Ok(Header {
        version,
        alignment,
        metadata,
        tensors: infos.into_iter().collect(),
        data_offset,
    })
}

fn check_version(r: &Reader, version: u32) -> Result<()> {
    let field = Field::Header("version");
    let reason = match version {
        2 | 3 => return Ok(()),
        0 => "bad GGUF version 0".to_string(),
        1 => "GGUF version 1 is no longer supported (supported: 2, 3); convert the file again with a current llama.cpp".to_string(),
        v if v & 0xFFFF == 0 => format!(
            "GGUF version {v} (0x{v:08x}) looks byte-swapped: a big-endian file? weft reads little-endian GGUF only"
        ),
        v => format!("GGUF version {v} is newer than weft supports (supported: 2, 3)"),
    };
    Err(r.fail(field, reason))
}

fn check_counts(r: &Reader, n_tensors: u64, n_kv: u64) -> Result<()> {
    let left = r.left() as u64;
    if n_tensors > left / MIN_TENSOR_INFO_BYTES {
        return Err(r.fail(
            Field::Header("n_tensors"),
            format!("{n_tensors} tensor infos cannot fit in the {left} bytes left in the file (each takes at least {MIN_TENSOR_INFO_BYTES}): the file is truncated or the count is corrupt"),
        ));
    }
    if n_kv > left / MIN_KV_BYTES {
        return Err(r.fail(
            Field::Header("n_kv"),
            format!("{n_kv} key-value pairs cannot fit in the {left} bytes left in the file (each takes at least {MIN_KV_BYTES}): the file is truncated or the count is corrupt"),
        ));
    }
    // Both counts are at most the file length here, so this cannot overflow.
    let need = n_tensors * MIN_TENSOR_INFO_BYTES + n_kv * MIN_KV_BYTES;
    if need > left {
        return Err(r.fail(
            Field::Header("n_kv"),
            format!("{n_kv} key-value pairs and {n_tensors} tensor infos need at least {need} bytes, but only {left} are left in the file: the file is truncated or a count is corrupt"),
        ));
    }
    Ok(())
}

/// Walks the key-value pairs, checking each, and returns where each value
/// is (decoded later) and the alignment.
fn read_kvs(r: &mut Reader, n_kv: u64) -> Result<(Vec<RawKv>, u32)> {
    let mut raw: Vec<RawKv> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..n_kv {
        let key = text(r.string(Field::Entry(i), "the key")?);
        if key.is_empty() {
            return Err(r.fail(Field::Entry(i), "the key is empty"));
        }
        let field = Field::Key(&key);
        if seen.contains(&key) {
            return Err(r.fail(field, format!("duplicate key (entry {i})")));
        }
        let code = r.u32(field, "the value type")?;
        let kind = Kind::from_code(code)
            .ok_or_else(|| r.fail(field, format!("unknown value type {code}")))?;
        let at = r.pos;
        skip_value(r, kind, field)?;
        if key == ALIGNMENT_KEY {
            alignment = read_alignment(r, kind, at, field)?;
        }
        seen.insert(key.clone());
        raw.push(RawKv { key, kind, at });
    }
    Ok((raw, alignment))
}

fn read_alignment(r: &Reader, kind: Kind, at: usize, field: Field) -> Result<u32> {
    if kind != Kind::U32 {
        return Err(r.fail(
            field,
            format!("must be of type u32, but is {}", kind.name()),
        ));
    }
    let mut word = [0u8; 4];
    word.copy_from_slice(&r.bytes[at..at + 4]);
    let a = u32::from_le_bytes(word);
    if a == 0 || !a.is_power_of_two() {
        return Err(r.fail(field, format!("alignment {a} is not a power of two")));
    }
    Ok(a)
}

/// Moves past one value, checking its type and that its bytes are there.
fn skip_value(r: &mut Reader, kind: Kind, field: Field) -> Result<()> {
    match kind {
        Kind::Str => {
            r.string(field, "the string value")?;
        }
        Kind::Array => {
            let code = r.u32(field, "the array element type")?;
            let elem = Kind::from_code(code)
                .ok_or_else(|| r.fail(field, format!("unknown array element type {code}")))?;
            if elem == Kind::Array {
                return Err(r.fail(
                    field,
                    "an array of arrays (GGUF arrays hold scalars or strings)",
                ));
            }
            let n = r.u64(field, "the array length")?;
            if n > MAX_ARRAY_LEN {
                return Err(r.fail(
                    field,
                    format!("array of {n} elements, over GGUF's limit of {MAX_ARRAY_LEN}"),
                ));
            }
            // n <= 2^30 and sizes <= 8: no overflow.
            let need = n * elem.min_size();
            if need > r.left() as u64 {
                return Err(r.fail(
                    field,
                    format!(
                        "file is truncated or corrupt in the header: an array of {n} {} values needs at least {need} bytes at byte {}, but only {} are left",
                        elem.name(),
                        r.pos,
                        r.left()
                    ),
                ));
            }
            if elem == Kind::Str {
                for _ in 0..n {
                    r.string(field, "a string in the array")?;
                }
            } else {
                r.take(need, field, "the array")?;
            }
        }
        k => {
            r.take(k.min_size(), field, "the value")?;
        }
    }
    Ok(())
}

/// Decodes a value `skip_value` has checked.
fn decode(r: &mut Reader, kind: Kind, field: Field) -> Result<Value> {
    Ok(match kind {
        Kind::U8 => Value::U8(r.array::<1>(field, "u8")?[0]),
        Kind::I8 => Value::I8(i8::from_le_bytes(r.array(field, "i8")?)),
        Kind::U16 => Value::U16(u16::from_le_bytes(r.array(field, "u16")?)),
        Kind::I16 => Value::I16(i16::from_le_bytes(r.array(field, "i16")?)),
        Kind::U32 => Value::U32(r.u32(field, "u32")?),
        Kind::I32 => Value::I32(i32::from_le_bytes(r.array(field, "i32")?)),
        Kind::F32 => Value::F32(f32::from_le_bytes(r.array(field, "f32")?)),
        // As gguf.cpp reads it: any byte but 0 is true.
        Kind::Bool => Value::Bool(r.array::<1>(field, "bool")?[0] != 0),
        Kind::Str => Value::String(text(r.string(field, "string")?)),
        Kind::U64 => Value::U64(r.u64(field, "u64")?),
        Kind::I64 => Value::I64(i64::from_le_bytes(r.array(field, "i64")?)),
        Kind::F64 => Value::F64(f64::from_le_bytes(r.array(field, "f64")?)),
        Kind::Array => {
            let code = r.u32(field, "the array element type")?;
            let elem = Kind::from_code(code)
                .filter(|k| *k != Kind::Array)
                .ok_or_else(|| r.fail(field, format!("bad array element type {code}")))?;
            let n = r.u64(field, "the array length")?;
            // skip_value bounded n by the bytes the elements take.
            let mut values = Vec::with_capacity(n as usize);
            for _ in 0..n {
                values.push(decode(r, elem, field)?);
            }
            Value::Array(values)
        }
    })
}

/// Reads and checks the tensor infos, in file order.
fn read_tensor_infos(
    r: &mut Reader,
    n_tensors: u64,
    alignment: usize,
) -> Result<Vec<(String, TensorInfo)>> {
    let mut infos: Vec<(String, TensorInfo)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    // Where the next tensor's data must start, relative to the data section.
    let mut running: u64 = 0;
    for i in 0..n_tensors {
        let raw_name = r.string(Field::TensorEntry(i), "the tensor name")?;
        let name = text(raw_name);
        if raw_name.len() >= MAX_TENSOR_NAME {
            return Err(r.fail(
                Field::Tensor(&name),
                format!(
                    "the name is {} bytes long; GGML allows at most {}",
                    raw_name.len(),
                    MAX_TENSOR_NAME - 1
                ),
            ));
        }
        if name.is_empty() {
            return Err(r.fail(Field::TensorEntry(i), "the tensor name is empty"));
        }
        let field = Field::Tensor(&name);
        if seen.contains(&name) {
            return Err(r.fail(field, format!("duplicate tensor name (tensor info {i})")));
        }
        let n_dims = r.u32(field, "the dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.fail(
                field,
                format!("{n_dims} dimensions (GGML tensors have 1 to {MAX_DIMS})"),
            ));
        }
        // GGUF order: innermost (the row length) first.
        let mut ne = Vec::with_capacity(n_dims as usize);
        for j in 0..n_dims {
            let d = r.u64(field, "a dimension")? as i64;
            if d <= 0 {
                return Err(r.fail(
                    field,
                    format!("dimension {j} is {d}; every dimension must be positive"),
                ));
            }
            ne.push(d as u64);
        }
        let elems = ne
            .iter()
            .try_fold(1u64, |acc, &d| {
                acc.checked_mul(d).filter(|&p| p <= i64::MAX as u64)
            })
            .ok_or_else(|| {
                r.fail(
                    field,
                    format!("shape {ne:?} (innermost first) has more than 2^63-1 elements"),
                )
            })?;
        let code = r.u32(field, "the type")?;
        let ty = GgmlType::from_code(code)
            .ok_or_else(|| r.fail(field, format!("unknown GGML type code {code}")))?;
        if ne[0] % ty.block_size as u64 != 0 {
            return Err(r.fail(
                field,
                format!(
                    "rows of {} elements are not a whole number of {} blocks ({} elements each)",
                    ne[0], ty.name, ty.block_size
                ),
            ));
        }
        let size = (elems / ty.block_size as u64)
            .checked_mul(ty.type_size as u64)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|s| s.checked_next_multiple_of(alignment).is_some())
            .ok_or_else(|| {
                r.fail(
                    field,
                    format!(
                        "shape {ne:?} (innermost first) of {} takes more bytes than a usize holds",
                        ty.name
                    ),
                )
            })?;
        let offset = r.u64(field, "the data offset")?;
        if offset != running {
            let why = if offset % alignment as u64 != 0 {
                format!("it is not a multiple of the alignment {alignment}")
            } else {
                format!("the previous tensors' data ends at {running} (tensors are stored in order, each padded to {alignment} bytes)")
            };
            return Err(r.fail(field, format!("bad data offset {offset}: {why}")));
        }
        let padded = size.next_multiple_of(alignment) as u64;
        running = running
            .checked_add(padded)
            .ok_or_else(|| r.fail(field, "the data section's size overflows a u64"))?;
        let dims = ne
            .iter()
            .rev()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<usize>, _>>()
            .map_err(|_| r.fail(field, "a dimension does not fit in a usize"))?;
        seen.insert(name.clone());
        infos.push((
            name,
            TensorInfo {
                dims,
                ggml_type: ty,
                offset,
                size,
            },
        ));
    }
    Ok(infos)
}
