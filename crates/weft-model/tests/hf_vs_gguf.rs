//! A tiny random-weight model written as Hugging Face safetensors and as an
//! F32 GGUF (llama.cpp's layout) loads to the same logits, for each
//! architecture. This checks the two loaders, the two naming schemes and the
//! two RoPE layouts against each other.

mod common;

use weft_model::session::Session;
use weft_model::{LoadOptions, Model};

fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut s = Session::new(model, 64);
    s.feed(tokens, true).unwrap()
}

fn check(arch: &'static str, tied: bool) {
    let tiny = common::Tiny {
        arch,
        tied,
        ..common::Tiny::llama()
    };
    let dir = common::temp_dir(&format!("hf-{arch}-{tied}"));
    let hf = dir.join("hf");
    tiny.write_hf(&hf, 11);
    let gguf = dir.join("model.gguf");
    tiny.write_gguf(&gguf, 11, &[]);
    let opts = LoadOptions {
        threads: Some(2),
        ..Default::default()
    };
    let a = Model::load(&hf, &opts).unwrap();
    let b = Model::load(&gguf, &opts).unwrap();
    let tokens: Vec<u32> = (0..20).map(|i| (i * 37 % 96) as u32).collect();
    let (la, lb) = (logits(&a, &tokens), logits(&b, &tokens));
    assert_eq!(la.len(), 20 * 96);
    let max_diff = la
        .iter()
        .zip(&lb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let scale = la.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    // Same f32 weights; only the order of a few sums differs (RoPE halves vs
    // interleaved pairs), so the logits agree to float rounding.
    assert!(
        max_diff <= 1e-4 * scale.max(1.0),
        "{arch}: max |diff| {max_diff} (logit scale {scale})"
    );
    assert!(scale > 0.1, "degenerate logits");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn llama_untied_hf_equals_gguf() {
    check("llama", false);
}

#[test]
fn llama_tied_hf_equals_gguf() {
    check("llama", true);
}

#[test]
fn qwen2_hf_equals_gguf() {
    check("qwen2", false);
}

#[test]
fn qwen3_hf_equals_gguf() {
    check("qwen3", true);
}

/// A sharded folder (`model.safetensors.index.json`) loads like a single file.
#[test]
fn sharded_safetensors_load() {
    let tiny = common::Tiny::llama();
    let dir = common::temp_dir("sharded");
    let single = dir.join("single");
    tiny.write_hf(&single, 5);
    let sharded = dir.join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::copy(single.join("config.json"), sharded.join("config.json")).unwrap();
    // Split the tensors over two shard files.
    let bytes = std::fs::read(single.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::tensor::serialize_to_file(views, None, &sharded.join(&file)).unwrap();
        for n in part {
            map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let opts = LoadOptions {
        threads: Some(1),
        ..Default::default()
    };
    let a = logits(&Model::load(&single, &opts).unwrap(), &[1, 2, 3]);
    let b = logits(&Model::load(&sharded, &opts).unwrap(), &[1, 2, 3]);
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(dir);
}
