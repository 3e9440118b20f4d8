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
