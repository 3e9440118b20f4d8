//! Tokenizers: built from GGUF metadata (GPT-2-style byte-level BPE as in
//! SmolLM2, Qwen and Llama 3; SentencePiece-style BPE as in Llama 2), or read
//! from a Hugging Face `tokenizer.json`. Either way the work is done by the
//! `tokenizers` crate: a GGUF vocabulary is turned into the same JSON
//! description Hugging Face would write, and loaded from it.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{json, Value};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// Token texts llama.cpp treats as end-of-generation when they are control tokens.
const END_OF_GENERATION: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "</s>",
];

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Tokens that end generation (EOS, end-of-turn, ...).
    pub stop_ids: Vec<u32>,
    /// Whether encoding with special tokens prepends BOS (or whatever the
    /// tokenizer's post-processor puts first).
    pub add_bos: bool,
    /// What encoding with special tokens puts before and after the text:
    /// `[bos]` and `[]` for most models; a `tokenizer.json`
    /// post-processor's template otherwise.
    special_prefix: Vec<u32>,
    special_suffix: Vec<u32>,
    pub chat_template: Option<String>,
    /// `inner` with special tokens read as plain text (built on first use).
    literal: std::sync::OnceLock<tokenizers::Tokenizer>,
    /// `inner.get_vocab_size(true)`, counted once: the `tokenizers` crate
    /// counts by cloning the whole vocabulary (4 MiB of strings for a
    /// 49k-token model), and every request's validation asks for it.
    vocab_size: usize,
}

const GGUF_CONTROL: i32 = 3;
const GGUF_USER_DEFINED: i32 = 4;

// The pre-tokenizer regexes below are llama.cpp's (`llm_tokenizer_bpe` in
// `src/llama-vocab.cpp`, llama-cpp-python 0.3.36), in its "adapted" spelling
// where it has one. llama.cpp splits the text with each regex in turn, keeping
// both matches and the text between them; the `tokenizers` crate's `Split`
// with `Isolated` behaviour does the same.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK_LLM: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
    "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
    "\\s+$",
    "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
    "\\p{N}+",
];
const DEEPSEEK_CODER: &[&str] = &[
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
    "\\p{N}",
];
const DEEPSEEK3: &[&str] = &[
    "\\p{N}{1,3}",
    "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const PORO: &str = " ?[^(\\s|.,!?\u{2026}\u{3002}\u{ff0c}\u{3001}\u{964}\u{6d4}\u{60c})]+";

/// How a GPT-2-style (`tokenizer.ggml.model = gpt2`) vocabulary splits text
/// before BPE, chosen by its `tokenizer.ggml.pre` name as llama.cpp chooses
/// it (`llama_vocab::impl::load`).
struct BpePre {
    /// Regexes applied in turn; each splits every piece the previous left.
    regexes: Vec<&'static str>,
    /// A piece that is itself a token is taken whole, without merges.
    ignore_merges: bool,
    /// llama.cpp's default for adding BOS when the file does not say.
    add_bos: bool,
}

impl BpePre {
    /// `None` for a pre-tokenizer weft does not implement.
    fn named(name: Option<&str>) -> Option<BpePre> {
        let pre = |regexes: &[&'static str], ignore_merges: bool, add_bos: bool| {
            Some(BpePre {
                regexes: regexes.to_vec(),
                ignore_merges,
                add_bos,
            })
        };
        match pre_name_or_default(name) {
            "default" => pre(
                &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
                false,
                false,
            ),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => pre(&[LLAMA3], true, true),
            "dbrx" | "smaug-bpe" => pre(&[LLAMA3], false, false),
            "chatglm-bpe" => pre(&[LLAMA3], false, false),
            "glm4" | "glm5" => pre(&[LLAMA3], true, false),
            "deepseek-llm" => pre(DEEPSEEK_LLM, false, false),
            "deepseek-coder" => pre(DEEPSEEK_CODER, false, false),
            "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => pre(DEEPSEEK3, false, false),
            "falcon" => pre(
                &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
                false,
                false,
            ),
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva-7b" => pre(&[r"\p{N}", GPT2], false, false),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo"
            | "jais" | "trillion" | "granite-docling" => pre(&[GPT2], false, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2"
            | "hunyuan" => pre(&[QWEN2], false, false),
            "qwen35" => pre(&[QWEN35], false, false),
            "poro-chat" | "bloom" | "gpt3-finnish" => pre(&[PORO], false, false),
            "viking" => pre(&[PORO, r"\p{N}"], false, false),
            "tekken" => pre(&[TEKKEN], true, true),
            "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => {
                pre(&[GPT4O], false, false)
            }
            _ => None,
        }
    }

    fn spec(&self) -> Value {
        let mut steps: Vec<Value> = self
            .regexes
            .iter()
            .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
            .collect();
        steps.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
        json!({"type": "Sequence", "pretokenizers": steps})
    }
}

/// A missing or empty `tokenizer.ggml.pre` means llama.cpp's "default".
fn pre_name_or_default(pre: Option<&str>) -> &str {
    match pre {
        None | Some("") => "default",
        Some(p) => p,
    }
}

fn added_tokens(tokens: &[&str], types: &[i32]) -> Vec<Value> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, t))| **t == GGUF_CONTROL || **t == GGUF_USER_DEFINED)
        .map(|(id, (content, t))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": *t == GGUF_CONTROL})
        })
        .collect()
}

/// A `tokenizer.json` whose `model` gets `vocab` (token -> id, ids in
/// order) and `merges` written from borrowed strings; `spec` is the rest
/// (its `model` object without those two keys).
struct StreamedSpec<'a> {
    spec: &'a Value,
    vocab: &'a [&'a str],
    merges: &'a [&'a str],
}

impl serde::Serialize for StreamedSpec<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Vocab<'a>(&'a [&'a str]);
        impl serde::Serialize for Vocab<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                // A repeated token keeps its last id, as a JSON object
                // parsed into a map does.
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (id, t) in self.0.iter().enumerate() {
                    m.serialize_entry(t, &id)?;
                }
                m.end()
            }
        }
        struct Model<'a>(
            &'a serde_json::Map<String, Value>,
            &'a [&'a str],
            &'a [&'a str],
        );
        impl serde::Serialize for Model<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len() + 2))?;
                for (k, v) in self.0 {
                    m.serialize_entry(k, v)?;
                }
                m.serialize_entry("vocab", &Vocab(self.1))?;
                m.serialize_entry("merges", self.2)?;
                m.end()
            }
        }
        let empty = serde_json::Map::new();
        let top = self.spec.as_object().unwrap_or(&empty);
        let model = top
            .get("model")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let mut m = s.serialize_map(Some(top.len()))?;
        for (k, v) in top {
            if k == "model" {
                m.serialize_entry(k, &Model(model, self.vocab, self.merges))?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// Merges for a SentencePiece vocabulary: every split of a piece into two
/// pieces, ranked by the merged piece's score (as llama.cpp's SPM tokenizer
/// merges the highest-scoring pair first).
fn spm_merges(tokens: &[&str], scores: &[f32], types: &[i32]) -> Vec<String> {
    let index: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(f32, usize, usize, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types.get(id).copied().unwrap_or(1) != 1 {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                merges.push((
                    scores.get(id).copied().unwrap_or(0.0),
                    li,
                    ri,
                    format!("{l} {r}"),
                ));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges.into_iter().map(|m| m.3).collect()
}

/// A Hugging Face folder's chat template, where `transformers` looks for
/// it: the `chat_template.jinja` file transformers 4.43+ saves (it
/// overrides the config's, as in `tokenization_utils_base.py`), then
/// `chat_template` in `tokenizer_config.json` (a string, or a list of
/// `{name, template}` of which `default` is used, else the first), then a
/// `chat_template.json` (`{"chat_template": ...}`).
fn hf_chat_template(dir: &Path, cfg: &Value) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(t);
    }
    match &cfg["chat_template"] {
        Value::String(t) => return Some(t.clone()),
        Value::Array(named) => {
            let pick = named
                .iter()
                .find(|t| t["name"] == "default")
                .or_else(|| named.first());
            if let Some(t) = pick.and_then(|t| t["template"].as_str()) {
                return Some(t.to_string());
            }
        }
        _ => {}
    }
    std::fs::read_to_string(dir.join("chat_template.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["chat_template"].as_str().map(String::from))
}

/// The special tokens a `tokenizer.json` post-processor puts before and
/// after a single sequence, as `tokenizers` applies it when
/// `add_special_tokens` is set. `None` when there is no post-processor that
/// adds tokens (none, or only `ByteLevel`), so the caller falls back to
/// `add_bos_token`. Token texts the vocabulary lacks are skipped.
fn post_processor_specials(
    pp: &Value,
    inner: &tokenizers::Tokenizer,
) -> Option<(Vec<u32>, Vec<u32>)> {
    let id_of = |t: &Value| -> Option<u32> {
        // ["<s>", 1] in Bert/Roberta processors.
        t[1].as_u64()
            .map(|i| i as u32)
            .or_else(|| t[0].as_str().and_then(|s| inner.token_to_id(s)))
    };
    match pp["type"].as_str()? {
        "Sequence" => pp["processors"]
            .as_array()?
            .iter()
            .find_map(|p| post_processor_specials(p, inner)),
        "BertProcessing" | "RobertaProcessing" => Some((
            id_of(&pp["cls"]).into_iter().collect(),
            id_of(&pp["sep"]).into_iter().collect(),
        )),
        "TemplateProcessing" => {
            let single = pp["single"].as_array()?;
            let seq = single.iter().position(|p| p.get("Sequence").is_some())?;
            let ids = |items: &[Value]| -> Vec<u32> {
                items
                    .iter()
                    .filter_map(|p| p["SpecialToken"]["id"].as_str())
                    .flat_map(|name| {
                        // The template's own table maps a name to its ids.
                        match pp["special_tokens"][name]["ids"].as_array() {
                            Some(ids) => ids
                                .iter()
                                .filter_map(|i| i.as_u64())
                                .map(|i| i as u32)
                                .collect(),
                            None => inner.token_to_id(name).into_iter().collect::<Vec<u32>>(),
                        }
                    })
                    .collect()
            };
            Some((ids(&single[..seq]), ids(&single[seq + 1..])))
        }
        _ => None,
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` keys.
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
        let missing = |reason: &str| ModelError::MissingTokenizer {
            path: g.path.clone(),
            reason: reason.to_string(),
        };
        let kind = g
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| missing("no `tokenizer.ggml.model` key"))?;
        let tokens = g
            .get_str_slices("tokenizer.ggml.tokens")
            .ok_or_else(|| missing("no `tokenizer.ggml.tokens` array"))?;
        let types = g
            .get_i32_array("tokenizer.ggml.token_type")
            .unwrap_or_else(|| vec![1; tokens.len()]);
        let added = added_tokens(&tokens, &types);
        let mut default_add_bos = kind == "llama";
        let spm_merged;
        let (spec, merges) = match kind {
            "gpt2" => {
                let merges = g
                    .get_str_slices("tokenizer.ggml.merges")
                    .ok_or_else(|| missing("BPE vocabulary without `tokenizer.ggml.merges`"))?;
                let name = g.get_str("tokenizer.ggml.pre");
                let pre = BpePre::named(name).ok_or_else(|| {
                    missing(&format!(
                        "unsupported pre-tokenizer `{}` for tokenizer model `gpt2` (tokenizer.ggml.pre)",
                        pre_name_or_default(name)
                    ))
                })?;
                default_add_bos = pre.add_bos;
                let spec = json!({
                    "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                    "normalizer": null, "pre_tokenizer": pre.spec(), "post_processor": null,
                    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                              "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                              "ignore_merges": pre.ignore_merges}
                });
                (spec, merges)
            }
            "llama" => {
                let scores = g
                    .get_f32_array("tokenizer.ggml.scores")
                    .unwrap_or_else(|| vec![0.0; tokens.len()]);
                spm_merged = spm_merges(&tokens, &scores, &types);
                let merges = spm_merged.iter().map(String::as_str).collect();
                let prefix = g
                    .get_bool("tokenizer.ggml.add_space_prefix")
                    .unwrap_or(true);
                let mut norm = vec![
                    json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}),
                ];
                if prefix {
                    norm.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
                }
                let unk = g
                    .get_usize("tokenizer.ggml.unknown_token_id")
                    .and_then(|i| tokens.get(i))
                    .copied();
                let spec = json!({
                    "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                    "normalizer": {"type": "Sequence", "normalizers": norm}, "pre_tokenizer": null, "post_processor": null,
                    "decoder": {"type": "Sequence", "decoders": [
                        {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                        {"type": "ByteFallback"}, {"type": "Fuse"},
                        {"type": "Strip", "content": " ", "start": if prefix { 1 } else { 0 }, "stop": 0}]},
                    "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                              "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                              "ignore_merges": false}
                });
                (spec, merges)
            }
            other => {
                return Err(missing(&format!(
                    "unsupported tokenizer model `{other}` (tokenizer.ggml.model; supported: gpt2, llama)"
                )))
            }
        };
        // The JSON value is dropped before the tokenizer is built, so that the
        // tokenizer's many small allocations reuse its memory instead of
        // interleaving with it (what stays resident after loading).
        // The vocabulary and merges are written straight from the file's
        // strings into the JSON text (no JSON value of 100k strings), then
        // everything but the tokenizer is dropped before it is built, so that
        // its many small allocations do not interleave with garbage (what
        // stays resident after loading).
        let text = serde_json::to_string(&StreamedSpec {
            spec: &spec,
            vocab: &tokens,
            merges: &merges,
        })
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", g.path.display())))?;
        drop((spec, merges));
        let inner = tokenizers::Tokenizer::from_bytes(text.as_bytes()).map_err(|e| {
            ModelError::Tokenizer(format!("{}: cannot build tokenizer: {e}", g.path.display()))
        })?;
        drop(text);
        // Special-token ids must name tokens of the vocabulary (a broken
        // file is refused here, not at the first request).
        let special_id = |key: &str| -> Result<Option<u32>> {
            match g.get_usize(key) {
                None => Ok(None),
                Some(id) if id < tokens.len() => Ok(Some(id as u32)),
                Some(id) => Err(missing(&format!(
                    "`{key}` is {id}, but the vocabulary has {} tokens",
                    tokens.len()
                ))),
            }
        };
        let bos = special_id("tokenizer.ggml.bos_token_id")?;
        let eos = special_id("tokenizer.ggml.eos_token_id")?;
        let mut stop: HashSet<u32> = eos.into_iter().collect();
        if let Some(eot) = special_id("tokenizer.ggml.eot_token_id")? {
            stop.insert(eot);
        }
        for (id, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            if *ty == GGUF_CONTROL && END_OF_GENERATION.contains(t) {
                stop.insert(id as u32);
            }
        }
        let mut stop_ids: Vec<u32> = stop.into_iter().collect();
        stop_ids.sort();
        // llama.cpp: `add_bos` / `add_eos` from the file, else its default.
        let add_bos = g
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(default_add_bos)
            && bos.is_some();
        let add_eos = g.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false) && eos.is_some();
        Ok(Tokenizer {
            // Ids are the list's positions; a repeated piece counts once in
            // `inner`'s map but still owns its id (and embedding row).
            vocab_size: inner.get_vocab_size(true).max(tokens.len()),
            inner,
            bos,
            eos,
            stop_ids,
            add_bos,
            special_prefix: if add_bos {
                bos.into_iter().collect()
            } else {
                vec![]
            },
            special_suffix: if add_eos {
                eos.into_iter().collect()
            } else {
                vec![]
            },
            chat_template: g.get_str("tokenizer.chat_template").map(String::from),
            literal: Default::default(),
        })
    }

    /// Reads `tokenizer.json` (and `tokenizer_config.json` and
    /// `generation_config.json`, when present) from a Hugging Face folder.
    ///
    /// Special tokens on encoding follow `transformers`: the tokenizer's
    /// post-processor (`TemplateProcessing`, `BertProcessing`,
    /// `RobertaProcessing`, also inside a `Sequence`) decides what goes
    /// around the text where it has one (Llama 3 adds BOS this way, with no
    /// `add_bos_token` in `tokenizer_config.json`); `add_bos_token` /
    /// `add_eos_token` decide otherwise. Generation stops at the EOS of
    /// `tokenizer_config.json`, every `eos_token_id` of
    /// `generation_config.json` (Llama 3 lists several), and the known
    /// end-of-turn control tokens.
    ///
    /// Errors: no `tokenizer.json`, or one `tokenizers` cannot read.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::MissingTokenizer {
                path: dir.to_path_buf(),
                reason: "no tokenizer.json in the model folder".into(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let raw: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let read_json = |name: &str| -> Value {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null)
        };
        let cfg = read_json("tokenizer_config.json");
        let generation = read_json("generation_config.json");
        let token_of = |key: &str| -> Option<u32> {
            let v = &cfg[key];
            let text = v.as_str().or_else(|| v["content"].as_str())?;
            inner.token_to_id(text)
        };
        let (special_prefix, special_suffix) =
            match post_processor_specials(&raw["post_processor"], &inner) {
                Some(around) => around,
                None => {
                    let bos = token_of("bos_token");
                    let eos = token_of("eos_token");
                    let flag = |k: &str| cfg[k].as_bool().unwrap_or(false);
                    (
                        bos.filter(|_| flag("add_bos_token")).into_iter().collect(),
                        eos.filter(|_| flag("add_eos_token")).into_iter().collect(),
                    )
                }
            };
        let bos = token_of("bos_token").or_else(|| special_prefix.first().copied());
        let eos = token_of("eos_token");
        let mut stop: HashSet<u32> = eos.into_iter().collect();
        match &generation["eos_token_id"] {
            Value::Number(n) => stop.extend(n.as_u64().map(|i| i as u32)),
            Value::Array(ids) => {
                stop.extend(ids.iter().filter_map(|i| i.as_u64()).map(|i| i as u32))
            }
            _ => {}
        }
        stop.retain(|&id| (id as usize) < inner.get_vocab_size(true));
        for t in END_OF_GENERATION {
            if let Some(id) = inner.token_to_id(t) {
                if inner
                    .get_added_tokens_decoder()
                    .get(&id)
                    .is_some_and(|a| a.special)
                {
                    stop.insert(id);
                }
            }
        }
        let mut stop_ids: Vec<u32> = stop.into_iter().collect();
        stop_ids.sort();
        Ok(Tokenizer {
            vocab_size: inner.get_vocab_size(true),
            add_bos: !special_prefix.is_empty(),
            special_prefix,
            special_suffix,
            chat_template: hf_chat_template(dir, &cfg),
            literal: Default::default(),
            inner,
            bos,
            eos,
            stop_ids,
        })
    }

    /// Token ids of `text`. Special-token text (like `<|im_start|>`) is
    /// always recognised; `add_special` adds what the model puts around a
    /// text (BOS for most; see [`Tokenizer::from_hf_dir`]).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special {
            ids.extend_from_slice(&self.special_prefix);
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special {
            ids.extend_from_slice(&self.special_suffix);
        }
        Ok(ids)
    }

    /// Token ids of a prompt, with one BOS policy for every caller (the
    /// engine, `weft run`, the server): text that a chat template rendered
    /// (`rendered_by_template`) is never given a BOS, as `transformers`'
    /// `apply_chat_template(tokenize=True)` and vLLM's chat endpoint encode
    /// it (the template writes `{{ bos_token }}` itself when the model wants
    /// one); plain text gets what the model puts before a text (its BOS),
    /// unless it already starts with the BOS token's text. What a
    /// post-processor puts *after* a text (an EOS) is not added: a prompt
    /// is continued, and the engine re-encodes contexts with this call.
    pub fn encode_prompt(&self, text: &str, rendered_by_template: bool) -> Result<Vec<u32>> {
        let starts_with_bos = self
            .bos
            .and_then(|b| self.id_to_token(b))
            .is_some_and(|b| !b.is_empty() && text.starts_with(&b));
        let mut ids = Vec::new();
        if !rendered_by_template && !starts_with_bos {
            ids.extend_from_slice(&self.special_prefix);
        }
        ids.extend(self.encode(text, false)?);
        Ok(ids)
    }

    /// Renders `messages` with the model's chat template, ending with the
    /// assistant's turn opener (`add_generation_prompt`), as `transformers`
    /// does. Errors: the model has no template, or the template fails.
    pub fn render_chat(&self, messages: &[crate::chat::Message]) -> Result<String> {
        self.render_chat_with(messages, crate::chat::ChatOptions::default())
    }

    /// [`Tokenizer::render_chat`] with `transformers`' flags
    /// (`add_generation_prompt`, `continue_final_message`). Errors: no
    /// template, a failed render, both flags set, or a final message the
    /// render does not contain.
    pub fn render_chat_with(
        &self,
        messages: &[crate::chat::Message],
        opts: crate::chat::ChatOptions,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| ModelError::ChatTemplate("this model has no chat template".into()))?;
        if opts.add_generation_prompt && opts.continue_final_message {
            return Err(ModelError::ChatTemplate(
                "continue_final_message and add_generation_prompt cannot both be set".into(),
            ));
        }
        let name = |id: Option<u32>| id.and_then(|b| self.id_to_token(b)).unwrap_or_default();
        let text = crate::chat::render(
            template,
            messages,
            opts.add_generation_prompt,
            &name(self.bos),
            &name(self.eos),
        )?;
        match messages.last() {
            Some(last) if opts.continue_final_message => {
                crate::chat::continue_final(&text, &last.content)
            }
            _ => Ok(text),
        }
    }

    /// Token ids of `text` with special-token text (like `<|im_end|>`) read
    /// as ordinary text, never as the control token.
    pub fn encode_literal(&self, text: &str) -> Result<Vec<u32>> {
        let literal = self.literal.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        let enc = literal
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Whether `text` holds the text of a special (control) token.
    pub fn contains_special_text(&self, text: &str) -> bool {
        self.inner
            .get_added_tokens_decoder()
            .values()
            .any(|t| t.special && !t.content.is_empty() && text.contains(&t.content))
    }

    /// Renders `messages` with the chat template and encodes the result
    /// (no BOS of its own: the template writes it). Text inside message
    /// contents never becomes a control token unless
    /// `special_tokens_in_content`: a user who writes `<|im_end|>` gets
    /// those characters, not the end of their turn. Messages without such
    /// text encode exactly as `transformers` encodes the rendered prompt.
    /// Errors: no template, a failed render, or a template that rewrites a
    /// content holding special-token text (so it cannot be found to
    /// protect).
    pub fn encode_chat(
        &self,
        messages: &[crate::chat::Message],
        special_tokens_in_content: bool,
    ) -> Result<(String, Vec<u32>)> {
        self.encode_chat_with(
            messages,
            crate::chat::ChatOptions::default(),
            special_tokens_in_content,
        )
    }

    /// [`Tokenizer::encode_chat`] with `transformers`' flags (see
    /// [`Tokenizer::render_chat_with`]).
    pub fn encode_chat_with(
        &self,
        messages: &[crate::chat::Message],
        opts: crate::chat::ChatOptions,
        special_tokens_in_content: bool,
    ) -> Result<(String, Vec<u32>)> {
        let text = self.render_chat_with(messages, opts)?;
        let risky: Vec<&str> = messages
            .iter()
            .map(|m| m.content.as_str())
            .filter(|c| self.contains_special_text(c))
            .collect();
        if special_tokens_in_content || risky.is_empty() {
            let ids = self.encode(&text, false)?;
            return Ok((text, ids));
        }
        // Encode the template's text as usual and each risky content
        // literally, in the order the template wrote them.
        let mut ids = Vec::new();
        let mut at = 0;
        for content in risky {
            let Some(pos) = text[at..].find(content).map(|p| p + at) else {
                return Err(ModelError::ChatTemplate(
                    "a message holds special-token text and the chat template rewrites it, so it cannot be kept literal".into(),
                ));
            };
            ids.extend(self.encode(&text[at..pos], false)?);
            ids.extend(self.encode_literal(content)?);
            at = pos + content.len();
        }
        ids.extend(self.encode(&text[at..], false)?);
        Ok((text, ids))
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Number of token ids, added tokens included (ids are `0..vocab_size`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    /// The underlying `tokenizers` object (for saving as `tokenizer.json`).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Turns a growing list of token ids into text pieces, never splitting a
/// UTF-8 character across pieces (byte-level tokens can end mid-character).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl StreamDecoder {
    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tok.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            let piece = full
                .get(prefix.len()..)
                .map(String::from)
                .unwrap_or_else(|| full.clone());
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(Some(piece))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod pre_tokenizer_tests {
    use super::*;

    #[test]
    fn pre_tokenizer_names_resolve_as_llama_cpp_does() {
        // Missing or empty: llama.cpp's "default" list (four regexes).
        assert_eq!(BpePre::named(None).unwrap().regexes.len(), 4);
        assert_eq!(BpePre::named(Some("")).unwrap().regexes.len(), 4);
        // Llama 3 takes whole words that are tokens, and adds BOS.
        let l3 = BpePre::named(Some("llama-bpe")).unwrap();
        assert!(l3.ignore_merges && l3.add_bos);
        // Names llama.cpp handles with code of its own, or that weft does
        // not know, are refused rather than guessed.
        for name in ["kimi-k2", "bailingmoe", "no-such-pre"] {
            assert!(BpePre::named(Some(name)).is_none(), "{name}");
        }
        // Every regex compiles in the `tokenizers` crate.
        for name in [
            "default",
            "llama3",
            "dbrx",
            "glm4",
            "deepseek-llm",
            "deepseek-coder",
            "deepseek-v3",
            "falcon",
            "starcoder",
            "gpt-2",
            "qwen2",
            "qwen35",
            "bloom",
            "viking",
            "tekken",
            "gpt-4o",
        ] {
            let spec = json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": null, "pre_tokenizer": BpePre::named(Some(name)).unwrap().spec(),
                "post_processor": null, "decoder": null,
                "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}
            });
            tokenizers::Tokenizer::from_bytes(spec.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
