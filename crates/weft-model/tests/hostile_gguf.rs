//! Handcrafted hostile GGUF files, one for each kind of bad header that
//! llama.cpp feeds its own reader (`tests/test-gguf.cpp`: bad magic, bad
//! versions, absurd counts, bad keys and value types, duplicate keys, bad
//! alignment, bad tensor names, dimension counts, shapes, types, offsets,
//! not enough data). Each must give an error that names the file, the field
//! and the reason; none may panic. And real files read as candle's reader
//! reads them.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use weft_model::gguf::GgufFile;
use weft_model::{LoadOptions, Model, ModelError, Tokenizer};

const NAME: &str = "hostile.gguf";

/// GGUF value type codes (gguf.h `enum gguf_type`).
const U8: u32 = 0;
const U32: u32 = 4;
const I32: u32 = 5;
const STR: u32 = 8;
const ARR: u32 = 9;
/// GGML type codes.
const F32: u32 = 0;
const Q4_0: u32 = 2;
const I8: u32 = 24;
const I64: u32 = 27;
const IQ4_NL: u32 = 20;

/// Writes GGUF bytes field by field, right or wrong.
#[derive(Clone)]
struct Gguf(Vec<u8>);

impl Gguf {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Gguf {
        let mut g = Gguf(b"GGUF".to_vec());
        g.u32(version).u64(n_tensors).u64(n_kv);
        g
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(U32).u32(v)
    }
    fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.str(key).u32(STR).str(v)
    }
    /// A tensor info; `ne` innermost first, as GGUF stores it.
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, align: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    fn data(&mut self, n: usize) -> &mut Self {
        self.0.extend((0..n).map(|i| i as u8));
        self
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

fn open(bytes: Vec<u8>) -> Result<GgufFile, ModelError> {
    GgufFile::from_bytes(NAME, bytes)
}

/// The error for `bytes`, checked to name the file and each of `words`.
#[track_caller]
fn refused(bytes: Vec<u8>, words: &[&str]) -> String {
    let e = match open(bytes) {
        Ok(_) => panic!("a hostile file opened; expected an error with {words:?}"),
        Err(e) => e.to_string(),
    };
    assert!(e.starts_with(NAME), "does not name the file: {e}");
    for w in words {
        assert!(e.contains(w), "{e:?} does not say {w:?}");
    }
    e
}

/// Two KVs and two tensors (F32 [8], Q4_0 [64 x 2]) with their data: the
/// valid file the hostile ones are variations of.
fn good() -> Gguf {
    let mut g = Gguf::header(3, 2, 2);
    g.kv_str("general.architecture", "llama")
        .kv_u32("general.alignment", 32)
        .tensor("a.weight", &[8], F32, 0)
        .tensor("b.weight", &[64, 2], Q4_0, 32)
        .pad(32)
        .data(32 + 72);
    g
}

#[test]
fn the_good_file_opens() {
    let g = open(good().bytes()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.get_str("general.architecture"), Some("llama"));
    let b = g.tensor("b.weight").unwrap();
    assert_eq!(b.dims, vec![2, 64]);
    assert_eq!(b.bytes.len(), 72);
    // The bytes are the data section's, from the tensor's offset on.
    assert_eq!(b.bytes.as_slice()[0], 32);
    assert_eq!(g.tensor_info("a.weight").unwrap().size, 32);
}

#[test]
fn bad_magic() {
    let mut b = good().bytes();
    b[..4].copy_from_slice(b"FUGG");
    refused(b, &["not a GGUF file", "FUGG"]);
    refused(b"GG".to_vec(), &["not a GGUF file"]);
    refused(Vec::new(), &["not a GGUF file"]);
}

#[test]
fn bad_versions() {
    for (v, why) in [
        (0, "bad GGUF version 0"),
        (1, "version 1 is no longer supported"),
        (4, "version 4 is newer than weft supports"),
        (0x0300_0000, "byte-swapped"),
    ] {
        let mut b = good().bytes();
        b[4..8].copy_from_slice(&(v as u32).to_le_bytes());
        refused(b, &["`version`", why]);
    }
    // Version 2 reads as 3 does.
    let mut b = good().bytes();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(open(b).unwrap().version(), 2);
}

#[test]
fn absurd_counts() {
    let b = Gguf::header(3, u64::MAX, 0).pad(32).bytes();
    refused(
        b,
        &[
            "`n_tensors`",
            "18446744073709551615 tensor infos cannot fit",
        ],
    );
    let b = Gguf::header(3, 0, u64::MAX).pad(32).bytes();
    refused(b, &["`n_kv`", "key-value pairs cannot fit"]);
    // Each fits alone, not both.
    let b = Gguf::header(3, 1, 2).pad(64).bytes();
    refused(b, &["`n_kv`", "2 key-value pairs and 1 tensor infos"]);
}

#[test]
fn bad_key_sizes() {
    let b = Gguf::header(3, 0, 1).u64(u64::MAX).data(16).bytes();
    refused(b, &["metadata entry 0", "the key", "over GGUF's limit"]);
    let b = Gguf::header(3, 0, 1).u64(1000).data(16).bytes();
    refused(
        b,
        &["metadata entry 0", "the key needs 1000 bytes", "truncated"],
    );
}

#[test]
fn empty_keys() {
    let b = Gguf::header(3, 0, 1).kv_u32("", 1).bytes();
    refused(b, &["metadata entry 0", "the key is empty"]);
    // NULs only: empty once the NULs writers leave are dropped.
    let b = Gguf::header(3, 0, 1).kv_u32("\0\0", 1).bytes();
    refused(b, &["metadata entry 0", "the key is empty"]);
}

#[test]
fn bad_value_types() {
    let b = Gguf::header(3, 0, 1).str("my.key").u32(13).u32(0).bytes();
    refused(b, &["`my.key`", "unknown value type 13"]);
    let b = Gguf::header(3, 0, 1)
        .str("my.key")
        .u32(u32::MAX)
        .u32(0)
        .bytes();
    refused(b, &["`my.key`", "unknown value type 4294967295"]);
    // An array of arrays.
    let b = Gguf::header(3, 0, 1)
        .str("my.key")
        .u32(ARR)
        .u32(ARR)
        .u64(1)
        .u32(U8)
        .u64(1)
        .u32(0)
        .bytes();
    refused(b, &["`my.key`", "an array of arrays"]);
    let b = Gguf::header(3, 0, 1)
        .str("my.key")
        .u32(ARR)
        .u32(99)
        .u64(1)
        .u64(0)
        .bytes();
    refused(b, &["`my.key`", "unknown array element type 99"]);
}

#[test]
fn bad_value_sizes() {
    let b = Gguf::header(3, 0, 1)
        .str("my.key")
        .u32(STR)
        .u64(u64::MAX)
        .bytes();
    refused(
        b,
        &[
            "`my.key`",
            "the string value has length",
            "over GGUF's limit",
        ],
    );
    let b = Gguf::header(3, 0, 1)
        .str("my.key")
        .u32(STR)
        .u64(500)
        .data(10)
        .bytes();
    refused(
        b,
        &["`my.key`", "the string value needs 500 bytes", "truncated"],
    );
    let b = Gguf::header(3, 0, 1)
        .str("my.key")
        .u32(ARR)
        .u32(U32)
        .u64(1 << 40)
        .bytes();
    refused(
        b,
        &[
            "`my.key`",
            "array of 1099511627776 elements, over GGUF's limit",
        ],
    );
    let b = Gguf::header(3, 0, 1)
        .str("my.key")
        .u32(ARR)
        .u32(U32)
        .u64(1000)
        .data(12)
        .bytes();
    refused(
        b,
        &[
            "`my.key`",
            "an array of 1000 u32 values needs at least 4000 bytes",
        ],
    );
    // Strings inside an array are checked one by one.
    let b = Gguf::header(3, 0, 1)
        .str("tokenizer.ggml.tokens")
        .u32(ARR)
        .u32(STR)
        .u64(2)
        .str("a")
        .u64(1 << 20)
        .data(40)
        .bytes();
    refused(
        b,
        &[
            "`tokenizer.ggml.tokens`",
            "a string in the array needs 1048576 bytes",
        ],
    );
}

#[test]
fn duplicate_keys() {
    let b = Gguf::header(3, 0, 2)
        .kv_u32("general.x", 1)
        .kv_str("general.x", "again")
        .bytes();
    refused(b, &["`general.x`", "duplicate key (entry 1)"]);
}

#[test]
fn bad_alignment() {
    // The 57-byte file that made candle's reader divide by zero (issue 15).
    let b = Gguf::header(3, 0, 1).kv_u32("general.alignment", 0).bytes();
    assert_eq!(b.len(), 57);
    refused(
        b,
        &["`general.alignment`", "alignment 0 is not a power of two"],
    );
    let b = Gguf::header(3, 0, 1)
        .kv_u32("general.alignment", 13)
        .bytes();
    refused(
        b,
        &["`general.alignment`", "alignment 13 is not a power of two"],
    );
    let b = Gguf::header(3, 0, 1)
        .str("general.alignment")
        .u32(I32)
        .u32(32)
        .bytes();
    refused(
        b,
        &["`general.alignment`", "must be of type u32, but is i32"],
    );
    // Through the public loaders too, as the issue's file was found.
    let dir = temp_dir("align");
    let path = dir.join("align0.gguf");
    std::fs::write(
        &path,
        Gguf::header(3, 0, 1).kv_u32("general.alignment", 0).bytes(),
    )
    .unwrap();
    let opts = LoadOptions {
        threads: Some(1),
        ..Default::default()
    };
    for e in [
        Model::load(&path, &opts).err().unwrap().to_string(),
        Tokenizer::load(&path).err().unwrap().to_string(),
    ] {
        assert!(
            e.contains("align0.gguf") && e.contains("general.alignment"),
            "{e}"
        );
    }
}

#[test]
fn a_custom_alignment_is_honoured() {
    let b = Gguf::header(3, 2, 1)
        .kv_u32("general.alignment", 64)
        .tensor("a.weight", &[8], F32, 0)
        .tensor("b.weight", &[8], F32, 64)
        .pad(64)
        .data(64 + 32)
        .bytes();
    let g = open(b.clone()).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.tensor("b.weight").unwrap().bytes.as_slice()[0], 64);
    // An offset on the default alignment is wrong here.
    let b = Gguf::header(3, 2, 1)
        .kv_u32("general.alignment", 64)
        .tensor("a.weight", &[8], F32, 0)
        .tensor("b.weight", &[8], F32, 32)
        .pad(64)
        .data(64 + 32)
        .bytes();
    refused(
        b,
        &[
            "tensor `b.weight`",
            "bad data offset 32",
            "not a multiple of the alignment 64",
        ],
    );
}

#[test]
fn bad_tensor_names() {
    let b = Gguf::header(3, 1, 0)
        .tensor("", &[8], F32, 0)
        .pad(32)
        .data(32)
        .bytes();
    refused(b, &["tensor info 0", "the tensor name is empty"]);
    let long = "t".repeat(64);
    let b = Gguf::header(3, 1, 0)
        .tensor(&long, &[8], F32, 0)
        .pad(32)
        .data(32)
        .bytes();
    refused(
        b,
        &[
            &format!("tensor `{long}`"),
            "64 bytes long; GGML allows at most 63",
        ],
    );
    let ok = "t".repeat(63);
    let b = Gguf::header(3, 1, 0)
        .tensor(&ok, &[8], F32, 0)
        .pad(32)
        .data(32)
        .bytes();
    assert!(open(b).unwrap().has_tensor(&ok));
    let b = Gguf::header(3, 2, 0)
        .tensor("a.weight", &[8], F32, 0)
        .tensor("a.weight", &[8], F32, 32)
        .pad(32)
        .data(64)
        .bytes();
    refused(
        b,
        &["tensor `a.weight`", "duplicate tensor name (tensor info 1)"],
    );
    let b = Gguf::header(3, 1, 0).u64(u64::MAX).data(40).bytes();
    refused(
        b,
        &[
            "tensor info 0",
            "the tensor name has length",
            "over GGUF's limit",
        ],
    );
}

fn one_tensor(ne: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    Gguf::header(3, 1, 0)
        .tensor("t.weight", ne, ty, offset)
        .pad(32)
        .data(data)
        .bytes()
}

#[test]
fn bad_dimension_counts() {
    refused(
        one_tensor(&[], F32, 0, 32),
        &[
            "tensor `t.weight`",
            "0 dimensions (GGML tensors have 1 to 4)",
        ],
    );
    refused(
        one_tensor(&[1, 1, 1, 1, 1], F32, 0, 32),
        &["tensor `t.weight`", "5 dimensions"],
    );
    let b = Gguf::header(3, 1, 0)
        .str("t.weight")
        .u32(u32::MAX)
        .data(40)
        .bytes();
    refused(b, &["tensor `t.weight`", "4294967295 dimensions"]);
}

#[test]
fn bad_shapes() {
    refused(
        one_tensor(&[8, u64::MAX], F32, 0, 32),
        &[
            "tensor `t.weight`",
            "dimension 1 is -1; every dimension must be positive",
        ],
    );
    refused(
        one_tensor(&[8, 0], F32, 0, 32),
        &["tensor `t.weight`", "dimension 1 is 0"],
    );
    // test-gguf.cpp's NE_TOO_BIG: 4 * INT32_MAX in each of 2... here 4 dimensions.
    let big = 4 * i32::MAX as u64;
    refused(
        one_tensor(&[big; 4], F32, 0, 32),
        &["tensor `t.weight`", "has more than 2^63-1 elements"],
    );
    // NBYTES_TOO_BIG: elements fit in an i64, bytes do not fit in a usize.
    refused(
        one_tensor(&[1 << 31, 1 << 31], I64, 0, 32),
        &["tensor `t.weight`", "takes more bytes than a usize holds"],
    );
    // NBYTES_PAD_WRAP: 2^64 - 16 bytes, which padding would wrap to 0.
    refused(
        one_tensor(&[4, (1 << 30) - 1, (1 << 30) + 1], F32, 0, 32),
        &["tensor `t.weight`", "takes more bytes than a usize holds"],
    );
}

#[test]
fn bad_types() {
    for code in [4u32, 5, 31, 36, 43, 1000, u32::MAX] {
        refused(
            one_tensor(&[32], code, 0, 128),
            &[
                "tensor `t.weight`",
                &format!("unknown GGML type code {code}"),
            ],
        );
    }
    refused(
        one_tensor(&[33], Q4_0, 0, 128),
        &[
            "tensor `t.weight`",
            "rows of 33 elements are not a whole number of Q4_0 blocks (32 elements each)",
        ],
    );
}

#[test]
fn real_but_unsupported_types_open_and_are_refused_by_name() {
    let g = open(one_tensor(&[32, 2], IQ4_NL, 0, 64)).unwrap();
    let e = g.tensor("t.weight").err().unwrap().to_string();
    assert!(
        e.contains("tensor `t.weight`")
            && e.contains("unsupported tensor type IQ4_NL (type code 20)"),
        "{e}"
    );
}

#[test]
fn bad_offsets() {
    refused(
        one_tensor(&[8], F32, u64::MAX, 32),
        &["tensor `t.weight`", "bad data offset 18446744073709551615"],
    );
    refused(
        one_tensor(&[8], F32, 1, 32),
        &[
            "tensor `t.weight`",
            "bad data offset 1: it is not a multiple of the alignment 32",
        ],
    );
    refused(
        one_tensor(&[8], F32, 32, 64),
        &[
            "tensor `t.weight`",
            "bad data offset 32: the previous tensors' data ends at 0",
        ],
    );
    // Overlapping the tensor before it.
    let b = Gguf::header(3, 2, 0)
        .tensor("a.weight", &[16], F32, 0)
        .tensor("b.weight", &[8], F32, 32)
        .pad(32)
        .data(128)
        .bytes();
    refused(
        b,
        &[
            "tensor `b.weight`",
            "bad data offset 32: the previous tensors' data ends at 64",
        ],
    );
}

#[test]
fn not_enough_data() {
    let mut b = good().bytes();
    let n = b.len();
    b.pop();
    let why = format!(
        "file is truncated: the tensor needs bytes {}..{n} but the file has {} bytes",
        n - 72,
        n - 1
    );
    refused(b, &["tensor `b.weight`", &why]);
    // test-gguf.cpp's MEM_SIZE_OVERFLOW: two I8 tensors of nearly 2^63 bytes.
    let n = 0x7FFF_FFFF_FFFF_FFC0;
    let b = Gguf::header(3, 2, 0)
        .tensor("a.weight", &[n], I8, 0)
        .tensor("b.weight", &[n], I8, n)
        .pad(32)
        .data(32)
        .bytes();
    refused(b, &["tensor `a.weight`", "file is truncated"]);
    // The header itself ends early, in every field of the good file.
    let full = good().bytes();
    let header_end = full.len() - (32 + 72);
    for cut in 0..header_end {
        let e = match open(full[..cut].to_vec()) {
            Ok(_) => panic!("a file cut at {cut} bytes opened"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.starts_with(NAME) && (e.contains("truncated") || e.contains("not a GGUF file")),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn data_section_past_the_end() {
    let b = Gguf::header(3, 1, 1)
        .kv_u32("general.alignment", 1 << 30)
        .tensor("t.weight", &[8], F32, 0)
        .data(32)
        .bytes();
    refused(
        b,
        &[
            "file is truncated: the header ends at byte",
            "next multiple of 1073741824",
        ],
    );
}

#[test]
fn names_with_control_characters_are_escaped() {
    let b = Gguf::header(3, 0, 2)
        .kv_u32("a\nb\u{1b}[2J", 1)
        .kv_u32("a\nb\u{1b}[2J", 1)
        .bytes();
    let e = refused(b, &["duplicate key"]);
    assert!(e.contains(r"a\nb\u{1b}[2J"), "{e}");
    // A backtick cannot end the quotes around the name.
    let b = Gguf::header(3, 1, 0)
        .tensor("a`b", &[0], F32, 0)
        .pad(32)
        .bytes();
    let e = refused(b, &["dimension 0 is 0"]);
    assert!(e.contains(r"tensor `a\`b`"), "{e}");
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-hostile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Equal values of the same type (floats by their bits).
fn same_value(a: &Value, b: &Value) -> bool {
    use Value::*;
    match (a, b) {
        (U8(x), U8(y)) => x == y,
        (I8(x), I8(y)) => x == y,
        (U16(x), U16(y)) => x == y,
        (I16(x), I16(y)) => x == y,
        (U32(x), U32(y)) => x == y,
        (I32(x), I32(y)) => x == y,
        (U64(x), U64(y)) => x == y,
        (I64(x), I64(y)) => x == y,
        (F32(x), F32(y)) => x.to_bits() == y.to_bits(),
        (F64(x), F64(y)) => x.to_bits() == y.to_bits(),
        (Bool(x), Bool(y)) => x == y,
        (String(x), String(y)) => x == y,
        (Array(x), Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        _ => false,
    }
}

/// Real files: weft's reader gives the same metadata, tensor shapes, types
/// and offsets as candle's `gguf_file::Content::read`.
fn same_as_candle(path: &Path) {
    let ours = GgufFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    let mut f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let theirs = gguf_file::Content::read(&mut f).unwrap();
    assert_eq!(
        ours.metadata.len(),
        theirs.metadata.len(),
        "{}",
        path.display()
    );
    for (k, v) in &theirs.metadata {
        let mine = ours
            .metadata
            .get(k)
            .unwrap_or_else(|| panic!("{}: no `{k}`", path.display()));
        assert!(same_value(mine, v), "{}: `{k}`", path.display());
    }
    assert_eq!(ours.tensor_names().count(), theirs.tensor_infos.len());
    let bytes = std::fs::read(path).unwrap();
    for (name, info) in &theirs.tensor_infos {
        let mine = ours.tensor_info(name).unwrap();
        assert_eq!(mine.dims, info.shape.dims(), "{name}");
        assert_eq!(mine.ggml_type.dtype(), Some(info.ggml_dtype), "{name}");
        assert_eq!(mine.offset, info.offset, "{name}");
        let t = ours.tensor(name).unwrap();
        let start = theirs.tensor_data_offset as usize + info.offset as usize;
        assert_eq!(
            t.bytes.as_slice(),
            &bytes[start..start + t.bytes.len()],
            "{name}"
        );
    }
}

#[test]
fn real_files_read_as_candle_reads_them() {
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME"));
    let model = std::env::var_os("WEFT_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        model.exists(),
        "{}: bash scripts/fetch-model.sh fetches it",
        model.display()
    );
    let mut files = vec![model];
    let peer = home.join(".cache/weft/peer/llama.cpp/models");
    let mut vocabs: Vec<PathBuf> = std::fs::read_dir(&peer)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
                .collect()
        })
        .unwrap_or_default();
    vocabs.sort();
    if vocabs.is_empty() {
        eprintln!(
            "no llama.cpp vocab files in {} (bash scripts/fetch-peer-suites.sh)",
            peer.display()
        );
    }
    files.extend(vocabs);
    for f in &files {
        same_as_candle(f);
    }
    eprintln!("{} real GGUF files read as candle reads them", files.len());
}
