//! A compact word-level tokenizer for Countdown traces, saved as a standard
//! Hugging Face `tokenizer.json` (loads with the `tokenizers` crate, Python
//! `tokenizers` and `transformers.PreTrainedTokenizerFast`).
//!
//! Pieces, tried in this order at each position (the same order as the
//! pre-tokenizer's regex alternation, so [`TraceTokenizer::encode`] and the
//! saved `tokenizer.json` give the same ids):
//! 1. every fixed phrase of the SoS+/APR formats (`Current State: `,
//!    `<Calling Sub Searches>`, ...), longest first, one token each;
//! 2. numbers: with [`NumberMode::Whole`] a number of 1-3 digits (no leading
//!    zero) is one token and longer ones are spelled digit by digit; with
//!    [`NumberMode::Digits`] every digit is a token;
//! 3. any other printable ASCII character or newline; anything else is `<unk>`.
//!
//! Special tokens: `<pad>` 0, `<s>` 1, `</s>` 2, `<unk>` 3. The post-processor
//! adds `<s>` in front; training code appends `</s>`.

use crate::error::{Result, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;

/// Every fixed phrase of the trace formats (order does not matter here; they
/// are tried longest first).
pub const PHRASES: &[&str] = &[
    "Moving to Node #",
    "Current State: ",
    ", Operations: ",
    "Exploring Operation: ",
    ", Resulting Numbers: ",
    "Generated Node #",
    " Operation: ",
    " equal: Goal Reached",
    " unequal: No Solution",
    "No solution found.",
    "No solution found in sub search",
    "<Calling Sub Searches>",
    "<End Calling Sub Searches>",
    "<Start Sub Search ",
    " at level ",
    "> Moving to Node #",
    "<Sub Searches>",
    "<End Sub Searches>",
    "<Goal Reached in Sub Search ",
    "<No Solution in Sub Search ",
    " at Node #",
    "Start Sub Search at level ",
    ": Moving to Node #",
    "Exit Sub Search at level ",
    "Sub Call Budget: ",
    "Token Budget: ",
    "['",
    "', '",
    "']",
    ", ",
];

pub const PAD: &str = "<pad>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
pub const UNK: &str = "<unk>";
const SPECIALS: [&str; 4] = [PAD, BOS, EOS, UNK];

/// How numbers become tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NumberMode {
    /// 0..=999 are single tokens; longer numbers are spelled digit by digit.
    Whole,
    /// Every digit is a token.
    Digits,
}

impl std::str::FromStr for NumberMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "whole" => Ok(NumberMode::Whole),
            "digits" => Ok(NumberMode::Digits),
            _ => Err(format!(
                "unknown number mode {s:?} (expected whole or digits)"
            )),
        }
    }
}

/// The trace tokenizer: a fast native encoder plus its `tokenizer.json`.
#[derive(Debug, Clone)]
pub struct TraceTokenizer {
    mode: NumberMode,
    /// Phrases, longest first, with their ids.
    phrases: Vec<(&'static str, u32)>,
    /// For each first byte, the phrases starting with it (longest first).
    by_first_byte: Vec<Vec<(&'static str, u32)>>,
    vocab: Vec<String>,
    ids: HashMap<String, u32>,
}

impl TraceTokenizer {
    pub fn new(mode: NumberMode) -> Self {
        let mut vocab: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        vocab.extend(PHRASES.iter().map(|p| p.to_string()));
        let max_number = match mode {
            NumberMode::Whole => 999,
            NumberMode::Digits => 9,
        };
        vocab.extend((0..=max_number).map(|n: u32| n.to_string()));
        vocab.push("\n".to_string());
        vocab.extend(
            (0x20u8..0x7f)
                .filter(|b| !b.is_ascii_digit())
                .map(|b| (b as char).to_string()),
        );
        let ids: HashMap<String, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut phrases: Vec<(&'static str, u32)> = PHRASES.iter().map(|&p| (p, ids[p])).collect();
        phrases.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let mut by_first_byte = vec![Vec::new(); 256];
        for &(p, id) in &phrases {
            by_first_byte[p.as_bytes()[0] as usize].push((p, id));
        }
        TraceTokenizer {
            mode,
            phrases,
            by_first_byte,
            vocab,
            ids,
        }
    }

    pub fn mode(&self) -> NumberMode {
        self.mode
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        self.vocab.get(id as usize).map(String::as_str)
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        self.scan(text, |id| out.push(id));
        out
    }

    /// Number of tokens of `text`, without special tokens.
    pub fn count(&self, text: &str) -> usize {
        let mut n = 0;
        self.scan(text, |_| n += 1);
        n
    }

    /// The text back from ids (special tokens dropped).
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter(|&&id| id as usize >= SPECIALS.len())
            .filter_map(|&id| self.token(id))
            .collect()
    }

    fn scan(&self, text: &str, mut emit: impl FnMut(u32)) {
        let unk = self.ids[UNK];
        let bytes = text.as_bytes();
        let mut pos = 0;
        'outer: while pos < text.len() {
            let rest = &text[pos..];
            for &(phrase, id) in &self.by_first_byte[bytes[pos] as usize] {
                if rest.starts_with(phrase) {
                    emit(id);
                    pos += phrase.len();
                    continue 'outer;
                }
            }
            let run = bytes[pos..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if run > 0 {
                let after_digit = pos > 0 && bytes[pos - 1].is_ascii_digit();
                let whole = self.mode == NumberMode::Whole
                    && !after_digit
                    && run <= 3
                    && (run == 1 || bytes[pos] != b'0');
                let len = if whole { run } else { 1 };
                emit(self.ids[&text[pos..pos + len]]);
                pos += len;
                continue;
            }
            let c = rest.chars().next().unwrap_or(' ');
            let mut buf = [0u8; 4];
            emit(self.id(c.encode_utf8(&mut buf)).unwrap_or(unk));
            pos += c.len_utf8();
        }
    }

    /// The pre-tokenizer regex: the same alternatives in the same order as
    /// [`TraceTokenizer::encode`].
    fn pattern(&self) -> String {
        let mut alts: Vec<String> = self.phrases.iter().map(|(p, _)| escape(p)).collect();
        if self.mode == NumberMode::Whole {
            alts.push("(?<![0-9])(?:0|[1-9][0-9]{0,2})(?![0-9])".into());
        }
        alts.push("[0-9]".into());
        alts.push("\\n".into());
        alts.push(".".into());
        alts.join("|")
    }

    /// The tokenizer as a Hugging Face `tokenizer.json` document, checked by
    /// loading it with the `tokenizers` crate.
    pub fn to_json(&self) -> Result<String> {
        let vocab: serde_json::Map<String, serde_json::Value> = self
            .vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        let added: Vec<serde_json::Value> = SPECIALS
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {
                "type": "Split",
                "pattern": {"Regex": self.pattern()},
                "behavior": "Isolated",
                "invert": false
            },
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {BOS: {"id": BOS, "ids": [1], "tokens": [BOS]}}
            },
            "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}
        });
        let hf = self.to_hf_from(&doc.to_string())?;
        hf.to_string(true)
            .map_err(|e| TaskError::Tokenizer(e.to_string()))
    }

    fn to_hf_from(&self, json: &str) -> Result<tokenizers::Tokenizer> {
        json.parse::<tokenizers::Tokenizer>()
            .map_err(|e| TaskError::Tokenizer(e.to_string()))
    }

    /// The tokenizer loaded into the `tokenizers` crate.
    pub fn to_hf(&self) -> Result<tokenizers::Tokenizer> {
        self.to_hf_from(&self.to_json()?)
    }

    /// Writes `tokenizer.json` to `path`.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        std::fs::write(path, self.to_json()?)?;
        Ok(())
    }
}

/// Escapes regex metacharacters (Oniguruma syntax).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if ".+*?()|[]{}^$\\".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
