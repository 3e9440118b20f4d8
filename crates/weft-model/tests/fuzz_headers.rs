//! Mutation fuzzers over real model headers. Each mutated input goes through
//! weft's public loaders inside `catch_unwind`; an error is the expected
//! answer, a panic is a failure (its input is saved under
//! `$TMPDIR/weft-fuzz-crashes/` to reproduce it).
//!
//! - `gguf`: SmolLM2-135M-Instruct Q4_1 (`scripts/fetch-model.sh`), llama.cpp's
//!   `ggml-vocab-*.gguf` files when `scripts/fetch-peer-suites.sh` has fetched
//!   them, and a tiny random model with a vocabulary; through
//!   `GgufFile::from_bytes`, `ModelConfig::from_gguf`, `Tokenizer::from_gguf`,
//!   and for the tiny model `Model::load_gguf`. Mutations hit the header
//!   region: the header's own fields (counts, lengths, types, dims, offsets)
//!   set to boundary values, bit flips, bytes set to 0/0x7f/0x80/0xff,
//!   insertions, deletions, copied chunks, truncation.
//! - `safetensors`: the tiny model's `model.safetensors`, its JSON header
//!   mutated field by field or byte by byte, through `Model::load`.
//! - `config_json`: the tiny model's `config.json` (and forms with
//!   `rope_scaling` / `rope_parameters`), mutated value by value or byte by
//!   byte, through `Model::load`.
//!
//! By default each runs a fixed number of seeded iterations (seconds in all).
//! `WEFT_FUZZ_SECS=N` runs each for N seconds instead and `WEFT_FUZZ_SEED`
//! picks the seed, e.g.
//! `WEFT_FUZZ_SECS=600 cargo test --release -p weft-model --test fuzz_headers gguf -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::Value as GValue;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};
use weft_model::gguf::GgufFile;
use weft_model::{LoadOptions, Model, ModelConfig, ModelError, Tokenizer};

// ---------------------------------------------------------------- harness

/// How long a fuzzer runs: a fixed count, or a duration from `WEFT_FUZZ_SECS`.
enum Budget {
    Iterations(u64),
    Time(Duration),
}

impl Budget {
    fn from_env(default_iterations: u64) -> Budget {
        match std::env::var("WEFT_FUZZ_SECS") {
            Ok(s) => Budget::Time(Duration::from_secs_f64(
                s.parse().expect("WEFT_FUZZ_SECS: seconds"),
            )),
            Err(_) => Budget::Iterations(default_iterations),
        }
    }

    fn more(&self, done: u64, start: Instant) -> bool {
        match self {
            Budget::Iterations(n) => done < *n,
            Budget::Time(d) => start.elapsed() < *d,
        }
    }
}

fn seed() -> u64 {
    std::env::var("WEFT_FUZZ_SEED")
        .ok()
        .map(|s| s.parse().expect("WEFT_FUZZ_SEED: an integer"))
        .unwrap_or(15)
}

#[derive(Default)]
struct Stats {
    iterations: u64,
    accepted: u64,
    errors: BTreeMap<String, u64>,
    panics: Vec<String>,
}

impl Stats {
    fn error(&mut self, stage: &str, e: &ModelError, path: &Path) {
        *self.errors.entry(error_kind(stage, e, path)).or_default() += 1;
    }

    fn report(&self, name: &str, start: Instant) {
        eprintln!(
            "fuzz {name}: {} iterations in {:.1} s, {} accepted by every stage, {} distinct error kinds, {} panics",
            self.iterations,
            start.elapsed().as_secs_f64(),
            self.accepted,
            self.errors.len(),
            self.panics.len()
        );
        let mut kinds: Vec<(&String, &u64)> = self.errors.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        for (k, n) in kinds.iter().take(60) {
            eprintln!("  {n:>8}  {k}");
        }
        for p in &self.panics {
            eprintln!("  PANIC {p}");
        }
    }
}

/// An error's message with the file, names and numbers taken out, so that
/// messages of one kind count once.
fn error_kind(stage: &str, e: &ModelError, path: &Path) -> String {
    let text = e.to_string().replace(&path.display().to_string(), "<file>");
    let mut out = String::new();
    let mut in_name = false;
    let mut last_digit = false;
    let mut escaped = false;
    for c in text.chars() {
        // Names are quoted in backticks; a backtick inside one is escaped.
        let quote = c == '`' && !escaped;
        escaped = c == '\\' && !escaped;
        if quote {
            in_name = !in_name;
            if in_name {
                out.push_str("`_");
            } else {
                out.push('`');
            }
            continue;
        }
        if in_name {
            continue;
        }
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
            continue;
        }
        last_digit = false;
        out.push(c);
    }
    let cut: String = out.chars().take(110).collect();
    format!("{stage}: {cut}")
}

static HOOK: Once = Once::new();
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Panics inside fuzzed calls are recorded, not printed.
fn quiet_panics() {
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let msg = match info.payload().downcast_ref::<&str>() {
                Some(s) => s.to_string(),
                None => info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_default(),
            };
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            // The frames in weft's own code say where the bug is.
            let trace = std::backtrace::Backtrace::force_capture().to_string();
            let ours: Vec<&str> = trace
                .lines()
                .map(str::trim)
                .filter(|l| l.contains("weft_model::") || l.contains("crates/weft-model/src"))
                .take(6)
                .collect();
            *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("{msg} at {at}; in {}", ours.join(" <- ")));
        }));
    });
}

/// Runs `f` on one input; a panic is recorded with the input saved.
fn run_one(
    stats: &mut Stats,
    target: &str,
    iteration: u64,
    input: impl FnOnce() -> Vec<u8>,
    f: impl FnOnce(&mut Stats),
) {
    stats.iterations += 1;
    if catch_unwind(AssertUnwindSafe(|| f(stats))).is_err() {
        let what = LAST_PANIC
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        let dir = std::env::temp_dir().join("weft-fuzz-crashes");
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{target}-seed{}-{iteration}.bin", seed()));
        let _ = std::fs::write(&file, input());
        stats.panics.push(format!(
            "{target} iteration {iteration}: {what} (input: {})",
            file.display()
        ));
    }
}

// ---------------------------------------------------------------- mutations

/// Where a fixed-width field of a header is, and its width in bytes.
type Fields = Vec<(usize, u8)>;

const INTERESTING_U32: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    9,
    12,
    13,
    20,
    31,
    32,
    33,
    42,
    43,
    63,
    64,
    255,
    256,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];
const INTERESTING_U64: &[u64] = &[
    0,
    1,
    2,
    4,
    32,
    63,
    64,
    65,
    0xffff,
    1 << 30,
    (1 << 30) + 1,
    1 << 31,
    1 << 32,
    1 << 40,
    (1 << 62) - 1,
    1 << 62,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 31,
    u64::MAX - 1,
    u64::MAX,
];
const INTERESTING_U8: &[u8] = &[0, 1, 0x20, 0x7f, 0x80, 0xfe, 0xff];

/// Applies one to three mutations to `head` (the region under test);
/// returns a length to cut the whole input to, if one was chosen.
fn mutate(
    rng: &mut StdRng,
    head: &mut Vec<u8>,
    fields: &Fields,
    whole_len: usize,
) -> Option<usize> {
    let mut cut = None;
    for _ in 0..rng.gen_range(1..=3) {
        if head.is_empty() {
            break;
        }
        let pos = rng.gen_range(0..head.len());
        match rng.gen_range(0..100) {
            0..=39 if !fields.is_empty() => {
                let (at, w) = fields[rng.gen_range(0..fields.len())];
                if at + w as usize > head.len() {
                    continue;
                }
                if w == 8 {
                    let v = if rng.gen_bool(0.8) {
                        INTERESTING_U64[rng.gen_range(0..INTERESTING_U64.len())]
                    } else {
                        let old = u64::from_le_bytes(head[at..at + 8].try_into().unwrap());
                        old.wrapping_add(rng.gen_range(-64i64..=64) as u64)
                    };
                    head[at..at + 8].copy_from_slice(&v.to_le_bytes());
                } else if w == 4 {
                    let v = if rng.gen_bool(0.8) {
                        INTERESTING_U32[rng.gen_range(0..INTERESTING_U32.len())]
                    } else {
                        let old = u32::from_le_bytes(head[at..at + 4].try_into().unwrap());
                        old.wrapping_add(rng.gen_range(-8i32..=8) as u32)
                    };
                    head[at..at + 4].copy_from_slice(&v.to_le_bytes());
                } else {
                    head[at] = INTERESTING_U8[rng.gen_range(0..INTERESTING_U8.len())];
                }
            }
            0..=54 => head[pos] ^= 1 << rng.gen_range(0..8),
            55..=64 => head[pos] = INTERESTING_U8[rng.gen_range(0..INTERESTING_U8.len())],
            65..=72 => {
                let n = rng.gen_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                head.splice(pos..pos, bytes);
            }
            73..=80 => {
                let end = (pos + rng.gen_range(1..=16)).min(head.len());
                head.drain(pos..end);
            }
            81..=88 => {
                let len = rng.gen_range(1..=64).min(head.len() - pos);
                let chunk = head[pos..pos + len].to_vec();
                let to = rng.gen_range(0..head.len());
                if rng.gen_bool(0.5) {
                    head.splice(to..to, chunk);
                } else {
                    let end = (to + len).min(head.len());
                    head.splice(to..end, chunk);
                }
            }
            _ => {
                cut = Some(if rng.gen_bool(0.7) {
                    rng.gen_range(0..head.len())
                } else {
                    rng.gen_range(0..whole_len.max(1))
                });
            }
        }
    }
    cut
}

// ---------------------------------------------------------------- GGUF

/// A GGUF file to mutate: the header (mutated) and the data after it.
struct GgufSeed {
    name: String,
    head: Vec<u8>,
    fields: Fields,
    /// The data section: its bytes (small files) or only its length (large
    /// ones, whose data the header checks do not read: zeros stand in).
    tail: Tail,
    load_model: bool,
}

enum Tail {
    Bytes(Vec<u8>),
    Zeros(usize),
}

impl Tail {
    fn len(&self) -> usize {
        match self {
            Tail::Bytes(t) => t.len(),
            Tail::Zeros(n) => *n,
        }
    }
}

/// Walks a valid GGUF header: the positions of its fields and where the
/// data section starts. (The seeds are real files, so this may panic.)
fn gguf_layout(b: &[u8]) -> (Fields, usize) {
    let mut fields: Fields = vec![(4, 4), (8, 8), (16, 8)];
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
    let (n_tensors, n_kv) = (u64_at(8), u64_at(16));
    let mut p = 24;
    let mut alignment = 32;
    fn scalar(t: u32) -> usize {
        match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            _ => 8,
        }
    }
    for _ in 0..n_kv {
        fields.push((p, 8));
        let klen = u64_at(p);
        let key = &b[p + 8..p + 8 + klen];
        p += 8 + klen;
        fields.push((p, 4));
        let ty = u32_at(p);
        p += 4;
        if key == b"general.alignment" {
            alignment = u32_at(p) as usize;
        }
        match ty {
            8 => {
                fields.push((p, 8));
                p += 8 + u64_at(p);
            }
            9 => {
                let et = u32_at(p);
                let n = u64_at(p + 4);
                fields.push((p, 4));
                fields.push((p + 4, 8));
                p += 12;
                for i in 0..n {
                    if et == 8 {
                        if i < 8 {
                            fields.push((p, 8));
                        }
                        p += 8 + u64_at(p);
                    } else {
                        if i < 8 {
                            fields.push((p, scalar(et) as u8));
                        }
                        p += scalar(et);
                    }
                }
            }
            t => {
                fields.push((p, scalar(t) as u8));
                p += scalar(t);
            }
        }
    }
    for _ in 0..n_tensors {
        fields.push((p, 8));
        p += 8 + u64_at(p);
        fields.push((p, 4));
        let n_dims = u32_at(p) as usize;
        p += 4;
        for _ in 0..n_dims {
            fields.push((p, 8));
            p += 8;
        }
        fields.push((p, 4));
        fields.push((p + 4, 8));
        p += 12;
    }
    (fields, p.next_multiple_of(alignment))
}

fn gguf_seed(name: &str, bytes: Vec<u8>, keep_data: bool, load_model: bool) -> GgufSeed {
    let (fields, data) = gguf_layout(&bytes);
    let data = data.min(bytes.len());
    let tail = if keep_data {
        Tail::Bytes(bytes[data..].to_vec())
    } else {
        Tail::Zeros(bytes.len() - data)
    };
    let mut head = bytes;
    head.truncate(data);
    GgufSeed {
        name: name.to_string(),
        head,
        fields,
        tail,
        load_model,
    }
}

/// A tiny random llama with a SentencePiece-style vocabulary of 96 pieces.
fn tiny_gguf_bytes() -> Vec<u8> {
    let dir = common::temp_dir("fuzz-tiny-gguf");
    let path = dir.join("tiny.gguf");
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    tokens.extend((0..93u8).map(|i| {
        let c = char::from(b'!' + i);
        if i % 3 == 0 {
            format!("\u{2581}{c}")
        } else {
            c.to_string()
        }
    }));
    let n = tokens.len();
    common::Tiny::llama().write_gguf(
        &path,
        7,
        &[
            ("tokenizer.ggml.model", GValue::String("llama".into())),
            (
                "tokenizer.ggml.tokens",
                GValue::Array(tokens.into_iter().map(GValue::String).collect()),
            ),
            (
                "tokenizer.ggml.scores",
                GValue::Array((0..n).map(|i| GValue::F32(-(i as f32))).collect()),
            ),
            (
                "tokenizer.ggml.token_type",
                GValue::Array(
                    (0..n)
                        .map(|i| GValue::I32(if i < 3 { 3 } else { 1 }))
                        .collect(),
                ),
            ),
            ("tokenizer.ggml.bos_token_id", GValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", GValue::U32(2)),
            ("general.alignment", GValue::U32(32)),
            // Linear RoPE scaling sizes a table from rope.dimension_count,
            // so mutating that field is exercised.
            ("llama.rope.scaling.type", GValue::String("linear".into())),
            ("llama.rope.scaling.factor", GValue::F32(1.0)),
            ("llama.rope.dimension_count", GValue::U32(16)),
        ],
    );
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

fn smollm2_path() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_TEST_MODEL") {
        return p.into();
    }
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn vocab_files() -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").expect("HOME");
    let dir = PathBuf::from(home).join(".cache/weft/peer/llama.cpp/models");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    n.starts_with("ggml-vocab-") && n.ends_with(".gguf")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        eprintln!(
            "fuzz gguf: no llama.cpp vocab files in {} (bash scripts/fetch-peer-suites.sh fetches them); fuzzing the others",
            dir.display()
        );
    }
    files
}

fn gguf_seeds() -> Vec<GgufSeed> {
    let mut seeds = vec![gguf_seed("tiny.gguf", tiny_gguf_bytes(), true, true)];
    let smol = smollm2_path();
    let bytes = std::fs::read(&smol).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (bash scripts/fetch-model.sh fetches it)",
            smol.display()
        )
    });
    seeds.push(gguf_seed(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        bytes,
        false,
        false,
    ));
    for p in vocab_files() {
        let bytes = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        seeds.push(gguf_seed(&name, bytes, false, false));
    }
    seeds
}

/// A mutated header followed by the seed's data, cut to `total` bytes.
fn assemble(head: &[u8], tail: &Tail, total: usize) -> Vec<u8> {
    // Zeroed memory is mapped lazily: the large files cost only their headers.
    let mut bytes = vec![0u8; total];
    let h = head.len().min(total);
    bytes[..h].copy_from_slice(&head[..h]);
    if let Tail::Bytes(t) = tail {
        let n = (total - h).min(t.len());
        bytes[h..h + n].copy_from_slice(&t[..n]);
    }
    bytes
}

/// Every GGUF stage on one input; errors are counted by kind.
fn gguf_target(stats: &mut Stats, path: &Path, bytes: Vec<u8>, load_model: bool) {
    let g = match GgufFile::from_bytes(path, bytes) {
        Ok(g) => g,
        Err(e) => return stats.error("open", &e, path),
    };
    let mut all_ok = true;
    let cfg = ModelConfig::from_gguf(&g);
    if let Err(e) = &cfg {
        stats.error("config", e, path);
        all_ok = false;
    }
    if let Err(e) = Tokenizer::from_gguf(&g) {
        stats.error("tokenizer", &e, path);
        all_ok = false;
    }
    if load_model && cfg.is_ok() {
        let opts = LoadOptions {
            threads: Some(1),
            ..Default::default()
        };
        if let Err(e) = Model::load_gguf(&g, &opts) {
            stats.error("model", &e, path);
            all_ok = false;
        }
    }
    if all_ok {
        stats.accepted += 1;
    }
}

#[test]
fn gguf() {
    quiet_panics();
    let seeds = gguf_seeds();
    // The unmutated seeds open (so the mutations start from valid files).
    for s in &seeds {
        let total = s.head.len() + s.tail.len();
        GgufFile::from_bytes(&s.name, assemble(&s.head, &s.tail, total))
            .unwrap_or_else(|e| panic!("seed: {e}"));
    }
    let budget = Budget::from_env(400);
    let mut rng = StdRng::seed_from_u64(seed());
    let mut stats = Stats::default();
    let start = Instant::now();
    let mut i = 0;
    while budget.more(i, start) {
        // The tiny model half the time: it runs every stage, fast.
        let s = if rng.gen_bool(0.5) {
            &seeds[0]
        } else {
            &seeds[rng.gen_range(0..seeds.len())]
        };
        let mut head = s.head.clone();
        let tail_len = s.tail.len();
        let whole = head.len() + tail_len;
        let cut = mutate(&mut rng, &mut head, &s.fields, whole);
        let total = (head.len() + tail_len).min(cut.unwrap_or(usize::MAX));
        let path = PathBuf::from(&s.name);
        let input = || assemble(&head, &s.tail, total);
        run_one(&mut stats, &s.name, i, input, |st| {
            gguf_target(st, &path, input(), s.load_model)
        });
        i += 1;
    }
    stats.report("gguf", start);
    assert!(stats.panics.is_empty(), "{} panics", stats.panics.len());
    assert!(stats.errors.len() >= 10, "the mutations reach few checks");
}

// ---------------------------------------------------------------- safetensors

/// A JSON value to put where a number, string or list was.
fn interesting_json(rng: &mut StdRng) -> Json {
    let choices = [
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(3),
        json!(64),
        json!(i32::MAX),
        json!(u32::MAX),
        json!(1u64 << 32),
        json!(1u64 << 53),
        json!(1u64 << 62),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(-9_223_372_036_854_775_807i64),
        json!(0.5),
        json!(-0.0),
        json!(1e-45),
        json!(1e38),
        json!(1e308),
        json!(-1e308),
        json!(""),
        json!("llama"),
        json!("F32"),
        json!("yarn"),
        json!(null),
        json!(true),
        json!([]),
        json!([0]),
        json!({}),
    ];
    choices[rng.gen_range(0..choices.len())].clone()
}

/// Paths to every value in a JSON document.
fn json_paths(v: &Json, prefix: &mut Vec<Json>, out: &mut Vec<Vec<Json>>) {
    out.push(prefix.clone());
    match v {
        Json::Object(m) => {
            for (k, child) in m {
                prefix.push(json!(k));
                json_paths(child, prefix, out);
                prefix.pop();
            }
        }
        Json::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(json!(i));
                json_paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn json_at<'a>(v: &'a mut Json, path: &[Json]) -> &'a mut Json {
    path.iter().fold(v, |v, k| match k {
        Json::String(s) => &mut v[s.as_str()],
        Json::Number(n) => &mut v[n.as_u64().unwrap() as usize],
        _ => unreachable!(),
    })
}

/// One structural change: a value replaced, removed, or a known key added.
fn mutate_json(rng: &mut StdRng, doc: &mut Json, keys: &[&str]) {
    let mut paths = Vec::new();
    json_paths(doc, &mut Vec::new(), &mut paths);
    let path = paths[rng.gen_range(0..paths.len())].clone();
    match rng.gen_range(0..10) {
        0..=5 => *json_at(doc, &path) = interesting_json(rng),
        6 | 7 => {
            if let Some((last, parent)) = path.split_last() {
                match (json_at(doc, parent), last) {
                    (Json::Object(m), Json::String(k)) => {
                        m.remove(k);
                    }
                    (Json::Array(a), Json::Number(i)) => {
                        a.remove(i.as_u64().unwrap() as usize);
                    }
                    _ => {}
                }
            }
        }
        _ => {
            if let Json::Object(m) = json_at(doc, &path) {
                let k = keys[rng.gen_range(0..keys.len())];
                m.insert(k.to_string(), interesting_json(rng));
            }
        }
    }
}

const SAFETENSORS_KEYS: &[&str] = &["dtype", "shape", "data_offsets", "__metadata__", "x"];

fn safetensors_header(bytes: &[u8]) -> (Json, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Json = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

#[test]
fn safetensors() {
    quiet_panics();
    let dir = common::temp_dir("fuzz-safetensors");
    common::Tiny::llama().write_hf(&dir, 3);
    let file = dir.join("model.safetensors");
    let original = std::fs::read(&file).unwrap();
    let (header, data) = safetensors_header(&original);
    let opts = LoadOptions {
        threads: Some(1),
        ..Default::default()
    };
    Model::load(&dir, &opts).expect("the unmutated folder loads");
    let budget = Budget::from_env(2000);
    let mut rng = StdRng::seed_from_u64(seed());
    let mut stats = Stats::default();
    let start = Instant::now();
    let mut i = 0;
    while budget.more(i, start) {
        let bytes = if rng.gen_bool(0.6) {
            // Field by field: the JSON header stays JSON.
            let mut h = header.clone();
            for _ in 0..rng.gen_range(1..=3) {
                mutate_json(&mut rng, &mut h, SAFETENSORS_KEYS);
            }
            let text = serde_json::to_vec(&h).unwrap();
            let mut b = (text.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(&text);
            b.extend_from_slice(&data);
            b
        } else {
            let head_len = original.len() - data.len();
            let mut head = original[..head_len].to_vec();
            let cut = mutate(&mut rng, &mut head, &vec![(0, 8)], original.len());
            head.extend_from_slice(&data);
            head.truncate(cut.unwrap_or(usize::MAX));
            head
        };
        std::fs::write(&file, &bytes).unwrap();
        run_one(
            &mut stats,
            "model.safetensors",
            i,
            || bytes.clone(),
            |st| match Model::load(&dir, &opts) {
                Ok(_) => st.accepted += 1,
                Err(e) => st.error("load", &e, &dir),
            },
        );
        i += 1;
    }
    stats.report("safetensors", start);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(stats.panics.is_empty(), "{} panics", stats.panics.len());
}

// ---------------------------------------------------------------- config.json

const CONFIG_KEYS: &[&str] = &[
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rms_norm_eps",
    "rope_theta",
    "max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "rope_scaling",
    "rope_parameters",
    "rope_type",
    "type",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "attention_factor",
    "partial_rotary_factor",
];

/// The tiny model's config.json, and forms with RoPE scaling in the old
/// (`rope_scaling`) and transformers v5 (`rope_parameters`) spelling.
fn config_seeds(base: &Json) -> Vec<Json> {
    let mut seeds = vec![base.clone()];
    for (key, rope) in [
        (
            "rope_scaling",
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        ),
        ("rope_scaling", json!({"type": "linear", "factor": 2.0})),
        (
            "rope_scaling",
            json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
        ),
        (
            "rope_scaling",
            json!({"rope_type": "dynamic", "factor": 2.0}),
        ),
        (
            "rope_parameters",
            json!({"rope_type": "default", "rope_theta": 500000.0}),
        ),
        (
            "rope_parameters",
            json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 64}),
        ),
    ] {
        let mut s = base.clone();
        s[key] = rope;
        seeds.push(s);
    }
    seeds
}

#[test]
fn config_json() {
    quiet_panics();
    let dir = common::temp_dir("fuzz-config");
    common::Tiny::llama().write_hf(&dir, 4);
    let file = dir.join("config.json");
    let base: Json = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let seeds = config_seeds(&base);
    let opts = LoadOptions {
        threads: Some(1),
        ..Default::default()
    };
    Model::load(&dir, &opts).expect("the unmutated folder loads");
    let budget = Budget::from_env(1000);
    let mut rng = StdRng::seed_from_u64(seed());
    let mut stats = Stats::default();
    let start = Instant::now();
    let mut i = 0;
    while budget.more(i, start) {
        let seed_doc = &seeds[rng.gen_range(0..seeds.len())];
        let bytes = if rng.gen_bool(0.8) {
            let mut doc = seed_doc.clone();
            for _ in 0..rng.gen_range(1..=3) {
                mutate_json(&mut rng, &mut doc, CONFIG_KEYS);
            }
            serde_json::to_vec_pretty(&doc).unwrap()
        } else {
            let mut text = serde_json::to_vec_pretty(seed_doc).unwrap();
            let len = text.len();
            let cut = mutate(&mut rng, &mut text, &Vec::new(), len);
            text.truncate(cut.unwrap_or(usize::MAX));
            text
        };
        std::fs::write(&file, &bytes).unwrap();
        run_one(
            &mut stats,
            "config.json",
            i,
            || bytes.clone(),
            |st| match Model::load(&dir, &opts) {
                Ok(_) => st.accepted += 1,
                Err(e) => st.error("load", &e, &dir),
            },
        );
        i += 1;
    }
    stats.report("config.json", start);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(stats.panics.is_empty(), "{} panics", stats.panics.len());
}
