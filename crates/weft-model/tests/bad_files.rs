//! Broken model files give an error that names the file, the tensor (where
//! one is involved) and the reason; nothing panics.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use weft_model::{LoadOptions, Model, ModelError, Tokenizer};

fn load_err(path: &Path) -> String {
    match Model::load(
        path,
        &LoadOptions {
            threads: Some(1),
            ..Default::default()
        },
    ) {
        Ok(_) => panic!("{} loaded but is broken", path.display()),
        Err(e) => e.to_string(),
    }
}

fn tiny_gguf(tag: &str, meta: &[(&str, Value)]) -> (PathBuf, PathBuf) {
    let dir = common::temp_dir(tag);
    let path = dir.join("tiny.gguf");
    common::Tiny::llama().write_gguf(&path, 3, meta);
    (dir, path)
}

#[test]
fn truncated_data_names_the_tensor() {
    let (dir, path) = tiny_gguf("trunc", &[]);
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(&cut);
    assert!(
        e.contains("cut.gguf") && e.contains("truncated") && e.contains("tensor `"),
        "{e}"
    );
}

#[test]
fn truncated_header_is_reported() {
    let (dir, path) = tiny_gguf("trunc-head", &[]);
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("head.gguf");
    std::fs::write(&cut, &bytes[..200]).unwrap();
    let e = load_err(&cut);
    assert!(e.contains("head.gguf") && e.contains("truncated"), "{e}");
}

#[test]
fn not_a_gguf_file() {
    let dir = common::temp_dir("garbage");
    let p = dir.join("garbage.gguf");
    std::fs::write(&p, b"this is not a model file at all, just text").unwrap();
    let e = load_err(&p);
    assert!(
        e.contains("garbage.gguf") && e.contains("not a GGUF"),
        "{e}"
    );
    let e = load_err(&dir.join("missing.gguf"));
    assert!(
        e.contains("missing.gguf") && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn unknown_architecture() {
    let (_dir, path) = tiny_gguf(
        "arch",
        &[("general.architecture", Value::String("falcon".into()))],
    );
    let e = load_err(&path);
    assert!(e.contains("unknown architecture `falcon`"), "{e}");
}

#[test]
fn shape_mismatch_names_the_tensor() {
    // Metadata says 1 KV head; the k/v tensors have 2 heads' worth of rows.
    let (_dir, path) = tiny_gguf("shape", &[("llama.attention.head_count_kv", Value::U32(1))]);
    let e = load_err(&path);
    assert!(
        e.contains("blk.0.attn_k.weight") && e.contains("shape mismatch"),
        "{e}"
    );
}

#[test]
fn unsupported_tensor_type_names_the_tensor() {
    let (dir, path) = tiny_gguf("dtype", &[]);
    let mut bytes = std::fs::read(&path).unwrap();
    // Tensor info: name, n_dims (u32), dims (u64 each), type (u32), offset (u64).
    // The last tensor in the file, so that no later offset moves (IQ4_NL
    // blocks are smaller than F32's, so its data still fits).
    let name = b"output.weight";
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name); // with its length, so not `blk.N.attn_output.weight`
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    bytes[ty..ty + 4].copy_from_slice(&20u32.to_le_bytes()); // IQ4_NL
    let p = dir.join("iq.gguf");
    std::fs::write(&p, &bytes).unwrap();
    let e = load_err(&p);
    assert!(
        e.contains("output.weight") && e.contains("unsupported tensor type IQ4_NL (type code 20)"),
        "{e}"
    );
}

#[test]
fn missing_tokenizer() {
    let (_dir, path) = tiny_gguf("tok", &[]);
    match Tokenizer::load(&path) {
        Err(ModelError::MissingTokenizer { .. }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a GGUF without tokenizer keys gave a tokenizer"),
    }
    let dir = common::temp_dir("hf-tok");
    common::Tiny::llama().write_hf(&dir, 1);
    let e = Tokenizer::load(&dir)
        .err()
        .expect("no tokenizer.json")
        .to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[test]
fn hf_folder_problems() {
    let dir = common::temp_dir("hf-bad");
    let e = load_err(&dir);
    assert!(e.contains("config.json"), "{e}");
    common::Tiny::llama().write_hf(&dir, 1);
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt_neox"}"#).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("config.json") && e.contains("invalid config"),
        "{e}"
    );
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    common::Tiny::llama().write_hf(&dir, 1);
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let (_dir, path) = tiny_gguf("req", &[]);
    let model = Model::load(
        &path,
        &LoadOptions {
            threads: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let mut s = weft_model::session::Session::new(&model, 16);
    assert!(s.feed(&[], false).is_err());
    assert!(s
        .feed(&[10_000], false)
        .unwrap_err()
        .to_string()
        .contains("outside the vocabulary"));
    assert!(s
        .feed(&[1; 17], false)
        .unwrap_err()
        .to_string()
        .contains("context full"));
}

#[test]
fn absurd_head_dim_in_config_json_is_an_error() {
    // Found by tests/fuzz_headers.rs (config_json): a head_dim this large
    // made the RoPE frequency table overflow its capacity (a panic); a
    // smaller absurd one (2^40) asks for terabytes and aborts.
    let dir = common::temp_dir("hf-head-dim");
    common::Tiny::llama().write_hf(&dir, 1);
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["head_dim"] = serde_json::json!(u64::MAX);
    std::fs::write(&path, config.to_string()).unwrap();
    let e = std::panic::catch_unwind(|| load_err(&dir))
        .unwrap_or_else(|_| panic!("config.json with head_dim 2^64-1 panicked"));
    assert!(e.contains("config.json") && e.contains("head_dim"), "{e}");
}

#[test]
fn absurd_rope_dimension_in_gguf_metadata_is_an_error() {
    // Linear RoPE scaling sized its factor table from an unchecked
    // `rope.dimension_count` (a capacity-overflow panic; 2^40 aborts).
    let (_dir, path) = tiny_gguf(
        "rope-dim",
        &[
            ("llama.rope.scaling.type", Value::String("linear".into())),
            ("llama.rope.scaling.factor", Value::F32(1.0)),
            ("llama.rope.dimension_count", Value::U64(u64::MAX)),
        ],
    );
    let e = std::panic::catch_unwind(|| load_err(&path))
        .unwrap_or_else(|_| panic!("rope.dimension_count 2^64-1 panicked"));
    assert!(
        e.contains("tiny.gguf") && e.contains("RoPE dimension"),
        "{e}"
    );
}

/// Config keys weft cannot honour are refused by name, or handled exactly:
/// Llama biases, a zero RoPE dimension, a non-finite RoPE base or norm
/// epsilon, a shard path outside the folder; a Mistral sliding window caps
/// the context at the window (below it attention is full).
#[test]
fn config_keys_that_cannot_be_honoured_are_named() {
    use weft_model::config::HfConfig;
    let base = serde_json::json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 32,
        "max_position_embeddings": 4096
    });
    let path = Path::new("config.json");
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base.clone();
        c[k] = v;
        serde_json::from_value::<HfConfig>(c).unwrap()
    };
    for (key, v) in [
        ("attention_bias", serde_json::json!(true)),
        ("mlp_bias", serde_json::json!(true)),
    ] {
        let e = weft_model::ModelConfig::from_hf(path, &with(key, v)).unwrap_err();
        assert!(e.to_string().contains(key), "{e}");
    }
    let e = weft_model::ModelConfig::from_hf(path, &with("rms_norm_eps", serde_json::json!(-1.0)))
        .unwrap_err();
    assert!(e.to_string().contains("epsilon"), "{e}");
    let mut mistral = base.clone();
    mistral["model_type"] = "mistral".into();
    mistral["sliding_window"] = 1024.into();
    let cfg =
        weft_model::ModelConfig::from_hf(path, &serde_json::from_value(mistral).unwrap()).unwrap();
    assert_eq!(cfg.max_context, 1024);
    // GGUF: a zero rotation and a NaN base.
    for (key, value) in [
        ("llama.rope.dimension_count", Value::U32(0)),
        ("llama.rope.freq_base", Value::F32(f32::NAN)),
    ] {
        let (_dir, p) = tiny_gguf("rope-meta", &[(key, value)]);
        let e = load_err(&p);
        assert!(e.contains("tiny.gguf") && e.contains("RoPE"), "{key}: {e}");
    }
    // A shard named outside the folder is never opened.
    let dir = common::temp_dir("escape");
    common::Tiny::llama().write_hf(&dir, 1);
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.norm.weight": "../../../../etc/passwd"}}"#,
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(e.contains("not a file in the model folder"), "{e}");
}

#[test]
fn special_token_ids_outside_the_vocabulary_are_refused_at_load() {
    let tokens: Vec<Value> = ["<unk>", "<s>", "</s>", "a", "b"]
        .iter()
        .map(|t| Value::String(t.to_string()))
        .collect();
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
        let (_dir, path) = tiny_gguf(
            "bos-range",
            &[
                ("tokenizer.ggml.model", Value::String("llama".into())),
                ("tokenizer.ggml.tokens", Value::Array(tokens.clone())),
                (key, Value::U32(4_000_000_000)),
            ],
        );
        let e = match Tokenizer::load(&path) {
            Ok(_) => panic!("{key} out of range loaded"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("tiny.gguf") && e.contains(key), "{e}");
    }
}
