//! Training documents from JSONL and their packing into fixed-length rows.
//!
//! Each line is an object with `text` and, optionally, `prompt_chars`: the
//! leading characters the engine supplies at inference (a root or child
//! prompt), left out of the loss. Any other keys are ignored, so the files
//! `weft data countdown` writes are read as they are.
//!
//! Documents are tokenized with the `tokenizer.json` (its post-processor adds
//! BOS) and end with EOS. Packing is greedy in a seeded shuffled order: a
//! document that does not fit the current row starts the next one; one longer
//! than a row is cut (and counted). Positions restart at each document and
//! attention never crosses documents.

use crate::error::{Result, TrainError};
use crate::model::Batch;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use rayon::prelude::*;
use serde::Deserialize;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// One tokenized document.
#[derive(Debug, Clone)]
pub struct Document {
    pub tokens: Vec<u32>,
    /// Whether predicting `tokens[i]` counts towards the loss.
    pub counts: Vec<bool>,
}

#[derive(Deserialize)]
struct Line {
    text: String,
    #[serde(default)]
    prompt_chars: usize,
}

/// Special ids the data pipeline needs.
#[derive(Debug, Clone, Copy)]
pub struct Specials {
    pub eos: u32,
    pub pad: u32,
}

impl Specials {
    /// `</s>` and `<pad>` (falling back to EOS for padding).
    pub fn from_tokenizer(tok: &tokenizers::Tokenizer, path: &Path) -> Result<Specials> {
        let eos = ["</s>", "<|endoftext|>", "<|im_end|>", "<eos>"]
            .iter()
            .find_map(|t| tok.token_to_id(t))
            .ok_or_else(|| TrainError::Tokenizer {
                path: path.to_path_buf(),
                reason: "no end-of-sequence token (</s>, <|endoftext|>, <|im_end|> or <eos>)"
                    .into(),
            })?;
        let pad = tok.token_to_id("<pad>").unwrap_or(eos);
        Ok(Specials { eos, pad })
    }
}

pub fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path).map_err(|e| TrainError::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads and tokenizes every line of `path`.
pub fn load_documents(
    path: &Path,
    tok: &tokenizers::Tokenizer,
    specials: Specials,
) -> Result<Vec<Document>> {
    let file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut lines = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        if !line.trim().is_empty() {
            lines.push((i + 1, line));
        }
    }
    let docs = lines
        .par_iter()
        .map(|(number, line)| {
            let bad = |reason: String| TrainError::Data {
                path: path.to_path_buf(),
                line: *number,
                reason,
            };
            let rec: Line = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            if rec.prompt_chars > rec.text.len() {
                return Err(bad(format!(
                    "prompt_chars {} is past the end of text ({} bytes)",
                    rec.prompt_chars,
                    rec.text.len()
                )));
            }
            let enc = tok
                .encode(rec.text.as_str(), true)
                .map_err(|e| bad(format!("tokenizing: {e}")))?;
            let mut tokens = enc.get_ids().to_vec();
            let mut counts: Vec<bool> = enc
                .get_offsets()
                .iter()
                .zip(enc.get_special_tokens_mask())
                .map(|(&(start, _), &sp)| sp == 0 && start >= rec.prompt_chars)
                .collect();
            tokens.push(specials.eos);
            counts.push(true);
            Ok(Document { tokens, counts })
        })
        .collect::<Result<Vec<Document>>>()?;
    if docs.is_empty() {
        return Err(TrainError::Data {
            path: path.to_path_buf(),
            line: 0,
            reason: "no documents".into(),
        });
    }
    Ok(docs)
}

/// Rows of packed documents for one pass over the data.
#[derive(Debug, Clone)]
pub struct Packed {
    pub len: usize,
    pub input: Vec<Vec<u32>>,
    pub target: Vec<Vec<u32>>,
    pub weight: Vec<Vec<f32>>,
    pub position: Vec<Vec<u32>>,
    pub segment: Vec<Vec<u32>>,
    /// Non-padding tokens of each row.
    pub real: Vec<usize>,
    /// Documents cut because they were longer than a row.
    pub cut: usize,
}

impl Packed {
    pub fn rows(&self) -> usize {
        self.input.len()
    }

    /// Rows `[start, start + n)` (wrapping) as a batch.
    pub fn batch(&self, start: usize, n: usize) -> Batch {
        let mut b = Batch {
            rows: n,
            len: self.len,
            input: Vec::with_capacity(n * self.len),
            target: Vec::with_capacity(n * self.len),
            weight: Vec::with_capacity(n * self.len),
            position: Vec::with_capacity(n * self.len),
            segment: Vec::with_capacity(n * self.len),
            real_tokens: 0,
        };
        for k in 0..n {
            let r = (start + k) % self.rows();
            b.input.extend_from_slice(&self.input[r]);
            b.target.extend_from_slice(&self.target[r]);
            b.weight.extend_from_slice(&self.weight[r]);
            b.position.extend_from_slice(&self.position[r]);
            b.segment.extend_from_slice(&self.segment[r]);
            b.real_tokens += self.real[r];
        }
        b
    }
}

/// Packs `docs` (in an order shuffled by `seed`, or as given when `seed` is
/// `None`) into rows of `len` input tokens.
pub fn pack(docs: &[Document], len: usize, seed: Option<u64>, pad: u32) -> Packed {
    let mut order: Vec<usize> = (0..docs.len()).collect();
    if let Some(seed) = seed {
        order.shuffle(&mut StdRng::seed_from_u64(seed));
    }
    let mut p = Packed {
        len,
        input: Vec::new(),
        target: Vec::new(),
        weight: Vec::new(),
        position: Vec::new(),
        segment: Vec::new(),
        real: Vec::new(),
        cut: 0,
    };
    // A document of n tokens gives n - 1 (input, target) pairs.
    let mut row = RowBuilder::new(len, pad);
    for &i in &order {
        let doc = &docs[i];
        let mut pairs = doc.tokens.len().saturating_sub(1);
        if pairs == 0 {
            continue;
        }
        if pairs > len {
            p.cut += 1;
            pairs = len;
        }
        if row.used + pairs > len {
            row.finish(&mut p);
        }
        row.push(doc, pairs);
    }
    if row.used > 0 {
        row.finish(&mut p);
    }
    p
}

struct RowBuilder {
    len: usize,
    pad: u32,
    used: usize,
    seg: u32,
    input: Vec<u32>,
    target: Vec<u32>,
    weight: Vec<f32>,
    position: Vec<u32>,
    segment: Vec<u32>,
}

impl RowBuilder {
    fn new(len: usize, pad: u32) -> Self {
        RowBuilder {
            len,
            pad,
            used: 0,
            seg: 0,
            input: Vec::new(),
            target: Vec::new(),
            weight: Vec::new(),
            position: Vec::new(),
            segment: Vec::new(),
        }
    }

    fn push(&mut self, doc: &Document, pairs: usize) {
        for j in 0..pairs {
            self.input.push(doc.tokens[j]);
            self.target.push(doc.tokens[j + 1]);
            self.weight.push(if doc.counts[j + 1] { 1.0 } else { 0.0 });
            self.position.push(j as u32);
            self.segment.push(self.seg);
        }
        self.seg += 1;
        self.used += pairs;
    }

    fn finish(&mut self, out: &mut Packed) {
        out.real.push(self.used);
        // Padding: each pad token is its own document, so it attends only to
        // itself and never to real tokens.
        while self.input.len() < self.len {
            self.input.push(self.pad);
            self.target.push(self.pad);
            self.weight.push(0.0);
            self.position.push(0);
            self.segment.push(self.seg);
            self.seg += 1;
        }
        out.input.push(std::mem::take(&mut self.input));
        out.target.push(std::mem::take(&mut self.target));
        out.weight.push(std::mem::take(&mut self.weight));
        out.position.push(std::mem::take(&mut self.position));
        out.segment.push(std::mem::take(&mut self.segment));
        self.used = 0;
        self.seg = 0;
    }
}

/// Documents saved in a compact binary form, so a resumed run does not
/// tokenize its data again. The file starts with a key (data size and
/// tokenizer size); a different key means the cache is stale and ignored.
pub fn save_cache(path: &Path, key: u64, docs: &[Document]) -> Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    buf.extend_from_slice(b"WEFTDOC1");
    buf.extend_from_slice(&key.to_le_bytes());
    buf.extend_from_slice(&(docs.len() as u64).to_le_bytes());
    for d in docs {
        buf.extend_from_slice(&(d.tokens.len() as u32).to_le_bytes());
        for (&t, &c) in d.tokens.iter().zip(&d.counts) {
            // The top bit carries whether the token counts towards the loss.
            buf.extend_from_slice(&(t | if c { 0 } else { 1 << 31 }).to_le_bytes());
        }
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &buf).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Reads a cache written by [`save_cache`] with the same key, if any.
pub fn load_cache(path: &Path, key: u64) -> Option<Vec<Document>> {
    let bytes = std::fs::read(path).ok()?;
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    if bytes.get(..8)? != b"WEFTDOC1" || u64_at(8)? != key {
        return None;
    }
    let n = u64_at(16)? as usize;
    let mut at = 24;
    let mut docs = Vec::with_capacity(n.min(1 << 24));
    for _ in 0..n {
        let len = u32_at(at)? as usize;
        at += 4;
        let mut tokens = Vec::with_capacity(len);
        let mut counts = Vec::with_capacity(len);
        for _ in 0..len {
            let v = u32_at(at)?;
            at += 4;
            tokens.push(v & !(1 << 31));
            counts.push(v & (1 << 31) == 0);
        }
        docs.push(Document { tokens, counts });
    }
    (at == bytes.len()).then_some(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(tokens: &[u32], prompt: usize) -> Document {
        Document {
            tokens: tokens.to_vec(),
            counts: (0..tokens.len()).map(|i| i >= prompt).collect(),
        }
    }

    #[test]
    fn packing_keeps_documents_apart_and_covers_every_pair() {
        let docs = vec![
            doc(&[1, 5, 6, 2], 1),
            doc(&[1, 7, 2], 2),
            doc(&[1, 8, 9, 10, 11, 2], 1),
        ];
        let p = pack(&docs, 5, None, 0);
        // 3 + 2 pairs fit the first row; the third document (5 pairs) the second.
        assert_eq!(p.rows(), 2);
        assert_eq!(p.input[0], vec![1, 5, 6, 1, 7]);
        assert_eq!(p.target[0], vec![5, 6, 2, 7, 2]);
        assert_eq!(p.position[0], vec![0, 1, 2, 0, 1]);
        assert_eq!(p.segment[0], vec![0, 0, 0, 1, 1]);
        // Doc 2's prompt covers token 1 (id 7): its prediction does not count.
        assert_eq!(p.weight[0], vec![1.0, 1.0, 1.0, 0.0, 1.0]);
        assert_eq!(p.input[1], vec![1, 8, 9, 10, 11]);
        assert_eq!(p.cut, 0);
        let total: f32 = p.weight.iter().flatten().sum();
        assert_eq!(total, 3.0 + 1.0 + 5.0);
    }

    #[test]
    fn cache_round_trips_and_rejects_a_stale_key() {
        let docs = vec![doc(&[1, 5, 6, 2], 1), doc(&[1, 7, 2], 2)];
        let path = std::env::temp_dir().join(format!("weft-doc-cache-{}", std::process::id()));
        save_cache(&path, 42, &docs).unwrap();
        let back = load_cache(&path, 42).unwrap();
        assert_eq!(back.len(), 2);
        for (a, b) in docs.iter().zip(&back) {
            assert_eq!(a.tokens, b.tokens);
            assert_eq!(a.counts, b.counts);
        }
        assert!(load_cache(&path, 43).is_none());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn long_documents_are_cut_and_padding_is_isolated() {
        let docs = vec![doc(&[1, 2, 3, 4, 5, 6, 7, 8], 0), doc(&[1, 9], 0)];
        let p = pack(&docs, 4, None, 0);
        assert_eq!(p.cut, 1);
        assert_eq!(p.rows(), 2);
        assert_eq!(p.input[1], vec![1, 0, 0, 0]);
        assert_eq!(p.segment[1], vec![0, 1, 2, 3]);
        assert_eq!(p.weight[1], vec![1.0, 0.0, 0.0, 0.0]);
    }
}
