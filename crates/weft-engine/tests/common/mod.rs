//! Test helpers shared by the engine's integration tests.

#![allow(dead_code)]

use std::path::Path;

use rand::{Rng, SeedableRng};

/// The protocol `name` with its reference settings, but without the
/// engines' token-budget fork guards (`fork_budget_margin=none`; Multiverse
/// refuses forks within 30 tokens of `max_tokens`, NPR within 1024): for
/// tests that fork under small budgets to check something else.
pub fn unguarded(name: &str) -> Box<dyn weft_protocol::Protocol> {
    let options = match name {
        "multiverse" | "npr" => vec![("fork_budget_margin".to_string(), "none".to_string())],
        _ => Vec::new(),
    };
    weft_protocol::with_options(name, &options).unwrap()
}

/// Writes a 2-layer Llama (`config.json` + `model.safetensors`) with a
/// `vocab`-token vocabulary and random weights into `dir`.
///
/// With `rig: Some(id)` the model is built to predict token `id` after any
/// input: attention and MLP outputs are zero (the residual stream is the
/// embedding), every embedding has +1 in dimension 0, the final norm keeps
/// only dimension 0, and an untied `lm_head` scores only `id`, on it.
pub fn write_tiny(dir: &Path, vocab: usize, rig: Option<u32>) {
    write_rigged(dir, vocab, rig.map(|id| (id, Vec::new())));
}

/// [`write_tiny`] with a rig that predicts by the last token alone:
/// `rig: Some((default, after))` predicts `next` after the token `input`
/// of each `(input, next)` pair of `after`, and `default` after any other
/// token, whatever the positions and the rest of the context. Pair k uses
/// dimension k + 1: only `input`'s embedding has +1 there, the final norm
/// keeps it, and `lm_head` scores it +2 for `next` and -2 for `default`.
/// Inputs must differ; at most 31 pairs.
pub fn write_rigged(dir: &Path, vocab: usize, rig: Option<(u32, Vec<(u32, u32)>)>) {
    if let Some((_, after)) = &rig {
        assert!(after.len() < 32, "at most 31 pairs");
        let mut inputs: Vec<u32> = after.iter().map(|p| p.0).collect();
        inputs.sort_unstable();
        inputs.dedup();
        assert_eq!(inputs.len(), after.len(), "one next token per input");
    }
    let pairs: Vec<(u32, u32)> = rig.as_ref().map_or(Vec::new(), |r| r.1.clone());
    let rig = rig.map(|r| r.0);
    let (d, ff, heads, kv_heads, layers) = (32, 48, 4, 2, 2);
    let hd = d / heads;
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": d, "intermediate_size": ff,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 384,
        "tie_word_embeddings": rig.is_none(),
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add =
        |name: String, shape: Vec<usize>, offset: f32, fill: &dyn Fn(usize) -> Option<f32>| {
            let n: usize = shape.iter().product();
            let bytes = (0..n)
                .flat_map(|i| {
                    let random = offset + 0.3 * rng.gen_range(-1.0f32..1.0);
                    fill(i).unwrap_or(random).to_le_bytes()
                })
                .collect();
            tensors.push((name, shape, bytes));
        };
    let random = |_: usize| None;
    let zero = |_: usize| if rig.is_some() { Some(0.0) } else { None };
    let n_pairs = pairs.len();
    let embed_pairs = pairs.clone();
    let embed = move |i: usize| {
        rig?;
        let (token, dim) = (i / d, i % d);
        match dim {
            0 => Some(1.0),
            k if k <= n_pairs => Some(if embed_pairs[k - 1].0 as usize == token {
                1.0
            } else {
                0.0
            }),
            _ => None,
        }
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![vocab, d],
        0.0,
        &embed,
    );
    let norm = move |i: usize| rig.map(|_| if i <= n_pairs { 1.0 } else { 0.0 });
    add("model.norm.weight".into(), vec![d], 1.0, &norm);
    if let Some(id) = rig {
        let head = move |i: usize| {
            let (token, dim) = (i / d, i % d);
            let mut w = 0.0;
            if dim == 0 && token == id as usize {
                w = 1.0;
            }
            if (1..=n_pairs).contains(&dim) {
                let (_, next) = pairs[dim - 1];
                if token == id as usize {
                    w -= 2.0;
                }
                if token == next as usize {
                    w += 2.0;
                }
            }
            Some(w)
        };
        add("lm_head.weight".into(), vec![vocab, d], 0.0, &head);
    }
    for l in 0..layers {
        let p = format!("model.layers.{l}.");
        add(format!("{p}input_layernorm.weight"), vec![d], 1.0, &random);
        add(
            format!("{p}post_attention_layernorm.weight"),
            vec![d],
            1.0,
            &random,
        );
        add(
            format!("{p}self_attn.q_proj.weight"),
            vec![d, d],
            0.0,
            &random,
        );
        add(
            format!("{p}self_attn.k_proj.weight"),
            vec![kv_heads * hd, d],
            0.0,
            &random,
        );
        add(
            format!("{p}self_attn.v_proj.weight"),
            vec![kv_heads * hd, d],
            0.0,
            &random,
        );
        add(
            format!("{p}self_attn.o_proj.weight"),
            vec![d, d],
            0.0,
            &zero,
        );
        add(
            format!("{p}mlp.gate_proj.weight"),
            vec![ff, d],
            0.0,
            &random,
        );
        add(format!("{p}mlp.up_proj.weight"), vec![ff, d], 0.0, &random);
        add(format!("{p}mlp.down_proj.weight"), vec![d, ff], 0.0, &zero);
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
            (n.clone(), view.unwrap())
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}
