//! A SentencePiece-style (`tokenizer.ggml.model = llama`) vocabulary from GGUF
//! metadata: pieces merge by score, spaces become `▁`, unknown bytes fall
//! back to `<0xNN>` tokens, and decoding restores the text.

mod common;

use candle_core::quantized::gguf_file::Value;
use weft_model::Tokenizer;

#[test]
fn spm_vocabulary_from_gguf() {
    // (piece, score, type) with type 1 normal, 2 unknown, 3 control, 6 byte.
    let vocab: &[(&str, f32, i32)] = &[
        ("<unk>", 0.0, 2),
        ("<s>", 0.0, 3),
        ("</s>", 0.0, 3),
        ("<0x21>", 0.0, 6),
        ("\u{2581}", -1.0, 1),
        ("h", -2.0, 1),
        ("e", -2.0, 1),
        ("l", -2.0, 1),
        ("o", -2.0, 1),
        ("w", -2.0, 1),
        ("r", -2.0, 1),
        ("d", -2.0, 1),
        ("he", -1.5, 1),
        ("ll", -1.4, 1),
        ("llo", -1.2, 1),
        ("\u{2581}he", -1.1, 1),
        ("\u{2581}hello", -0.5, 1),
        ("\u{2581}w", -1.3, 1),
        ("or", -1.45, 1),
        ("ld", -1.35, 1),
        ("orld", -1.0, 1),
        ("\u{2581}world", -0.4, 1),
    ];
    let dir = common::temp_dir("spm");
    let path = dir.join("spm.gguf");
    let strings =
        |f: &dyn Fn(&(&str, f32, i32)) -> Value| Value::Array(vocab.iter().map(f).collect());
    common::Tiny::llama().write_gguf(
        &path,
        1,
        &[
            ("tokenizer.ggml.model", Value::String("llama".into())),
            (
                "tokenizer.ggml.tokens",
                strings(&|v| Value::String(v.0.into())),
            ),
            ("tokenizer.ggml.scores", strings(&|v| Value::F32(v.1))),
            ("tokenizer.ggml.token_type", strings(&|v| Value::I32(v.2))),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ],
    );
    let tok = Tokenizer::load(&path).unwrap();
    let id = |p: &str| vocab.iter().position(|v| v.0 == p).unwrap() as u32;
    let ids = tok.encode("hello world!", true).unwrap();
    assert_eq!(
        ids,
        vec![1, id("\u{2581}hello"), id("\u{2581}world"), id("<0x21>")]
    );
    assert_eq!(tok.decode(&ids[1..]).unwrap(), "hello world!");
    assert!(tok.add_bos && tok.is_stop(2));
    // Highest-scored pair first: l+d (-1.35), then h+e, then ▁+he.
    assert_eq!(
        tok.encode("held", false).unwrap(),
        vec![id("\u{2581}he"), id("ld")]
    );
}

/// Without a post-processor, `add_bos_token` / `add_eos_token` in
/// `tokenizer_config.json` decide (Llama 2 and Mistral folders); with one,
/// the post-processor decides and the flags are not read; nothing is added
/// to text a chat template rendered.
#[test]
fn bos_policy_of_hf_folders() {
    let base = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<s>": 0, "</s>": 1, "<unk>": 2, "hi": 3}, "unk_token": "<unk>"}
    });
    let with_template = {
        let mut t = base.clone();
        t["post_processor"] = serde_json::json!({"type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}});
        t
    };
    let cases = [
        (
            &base,
            serde_json::json!({"add_bos_token": true}),
            vec![0, 3],
        ),
        (
            &base,
            serde_json::json!({"add_bos_token": true, "add_eos_token": true}),
            vec![0, 3, 1],
        ),
        (&base, serde_json::json!({"add_bos_token": false}), vec![3]),
        (&base, serde_json::json!({}), vec![3]),
        // The post-processor adds nothing: the flag is not read.
        (
            &with_template,
            serde_json::json!({"add_bos_token": true}),
            vec![3],
        ),
    ];
    for (i, (tj, cfg, want)) in cases.into_iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("weft-bos-policy-{}-{i}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
        let mut cfg = cfg;
        cfg["bos_token"] = "<s>".into();
        cfg["eos_token"] = "</s>".into();
        cfg["chat_template"] = "{{ messages[0]['content'] }}".into();
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
        let tok = Tokenizer::load(&dir).unwrap();
        assert_eq!(tok.encode("hi", true).unwrap(), want, "case {i}: {cfg}");
        let lead = want.iter().position(|&t| t == 3).unwrap();
        assert_eq!(
            tok.encode_prompt("hi", false).unwrap(),
            want[..=lead],
            "case {i}"
        );
        assert_eq!(tok.encode("hi", false).unwrap(), vec![3], "case {i}");
        // Rendered by a template: nothing added.
        let (_, ids) = tok
            .encode_chat(&[weft_model::chat::Message::new("user", "hi")], false)
            .unwrap();
        assert_eq!(ids, vec![3], "case {i}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// The chat template is found where transformers looks: a string or a list
/// of named templates in tokenizer_config.json, else chat_template.jinja
/// (transformers 4.43+ saves it there), else chat_template.json.
#[test]
fn chat_template_is_found_where_transformers_saves_it() {
    let tj = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "hi": 1}, "unk_token": "<unk>"}
    });
    /// tokenizer_config.json, an extra file (name, text), the render.
    type Case = (
        serde_json::Value,
        Option<(&'static str, &'static str)>,
        &'static str,
    );
    let cases: [Case; 4] = [
        (
            serde_json::json!({"chat_template": "A{{ messages[0]['content'] }}"}),
            None,
            "Ahi",
        ),
        (
            serde_json::json!({"chat_template": [
                {"name": "tool_use", "template": "T"},
                {"name": "default", "template": "D{{ messages[0]['content'] }}"}]}),
            None,
            "Dhi",
        ),
        (
            serde_json::json!({}),
            Some(("chat_template.jinja", "J{{ messages[0]['content'] }}")),
            "Jhi",
        ),
        (
            serde_json::json!({}),
            Some((
                "chat_template.json",
                r#"{"chat_template": "P{{ messages[0]['content'] }}"}"#,
            )),
            "Phi",
        ),
    ];
    for (i, (cfg, file, want)) in cases.into_iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("weft-chat-file-{}-{i}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
        if let Some((name, text)) = file {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let tok = Tokenizer::load(&dir).unwrap();
        let msgs = [weft_model::chat::Message::new("user", "hi")];
        let got = tok
            .render_chat_with(
                &msgs,
                weft_model::chat::ChatOptions {
                    add_generation_prompt: false,
                    continue_final_message: false,
                },
            )
            .unwrap();
        assert_eq!(got, want, "case {i}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// A piece listed twice keeps its last id, as in llama.cpp's
/// `token_to_id[word] = i` over the list (and as a JSON object read into a
/// map); the vocabulary keeps its full size and the file loads.
#[test]
fn repeated_piece_keeps_its_last_id() {
    let pieces = [
        "<unk>",
        "<s>",
        "</s>",
        "\u{2581}",
        "a",
        "b",
        "ab",
        "a",
        "\u{2581}ab",
    ];
    let dir = common::temp_dir("spm-repeated");
    let path = dir.join("spm.gguf");
    let arr = |f: &dyn Fn(usize, &str) -> Value| {
        Value::Array(pieces.iter().enumerate().map(|(i, p)| f(i, p)).collect())
    };
    common::Tiny::llama().write_gguf(
        &path,
        1,
        &[
            ("tokenizer.ggml.model", Value::String("llama".into())),
            (
                "tokenizer.ggml.tokens",
                arr(&|_, p| Value::String(p.into())),
            ),
            (
                "tokenizer.ggml.scores",
                arr(&|i, _| Value::F32(-(i as f32))),
            ),
            (
                "tokenizer.ggml.token_type",
                arr(&|i, _| {
                    Value::I32(if i == 0 {
                        2
                    } else if i < 3 {
                        3
                    } else {
                        1
                    })
                }),
            ),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ],
    );
    let tok = Tokenizer::load(&path).unwrap();
    assert_eq!(tok.token_to_id("a"), Some(7));
    assert_eq!(tok.vocab_size(), pieces.len());
    assert_eq!(tok.encode("ab", false).unwrap(), vec![8]);
    let _ = std::fs::remove_dir_all(dir);
}
