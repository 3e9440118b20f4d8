//! A sequence decoded inside a batch of 8 (different prompts, lengths and
//! positions, each with its own block table in one shared KV cache) yields the
//! same greedy tokens as the same sequence decoded alone.

use weft_model::sampling::argmax;
use weft_model::session::Session;
use weft_model::{KvCache, LoadOptions, Model, SeqStep, Tokenizer, Workspace};

const STEPS: usize = 24;

fn model_path() -> std::path::PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    std::path::PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[test]
fn batch_of_eight_equals_alone() {
    let path = model_path();
    let model = Model::load(&path, &LoadOptions::default()).unwrap();
    let tok = Tokenizer::load(&path).unwrap();
    let prompts = [
        "The capital of France is",
        "Once upon a time, in a small village, there lived",
        "def fibonacci(n):\n",
        "The three primary colors are",
        "Q: What is 12 times 12?\nA:",
        "List of fruits: apple, banana,",
        "In 1969, the first humans",
        "Water boils at",
    ];
    let prompts: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode(p, true).unwrap())
        .collect();

    // Alone.
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut s = Session::new(&model, p.len() + STEPS + 1);
            let mut logits = s.feed(p, false).unwrap();
            (0..STEPS)
                .map(|_| {
                    let t = argmax(&logits);
                    logits = s.feed(&[t], false).unwrap();
                    t
                })
                .collect()
        })
        .collect();

    // Together: block tables interleaved in one cache (seq i owns blocks
    // i, i+8, i+16, ...), prefill as one step, then one decode step per token.
    let bs = 16;
    let per_seq = 8;
    let mut kv = KvCache::new(&model.config, bs, 8 * per_seq);
    let tables: Vec<Vec<u32>> = (0..8)
        .map(|i| (0..per_seq).map(|b| (b * 8 + i) as u32).collect())
        .collect();
    let mut ws = Workspace::default();
    let mut lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    let steps: Vec<SeqStep> = (0..8)
        .map(|i| SeqStep {
            tokens: &prompts[i],
            pos_start: 0,
            kv_start: 0,
            block_table: &tables[i],
            all_logits: false,
            shared: &[],
        })
        .collect();
    let mut logits = model.forward(&mut kv, &steps, &mut ws).unwrap();
    let mut together: Vec<Vec<u32>> = vec![Vec::new(); 8];
    for _ in 0..STEPS {
        let next: Vec<u32> = logits.iter().map(|l| argmax(l)).collect();
        for (i, t) in next.iter().enumerate() {
            together[i].push(*t);
        }
        let steps: Vec<SeqStep> = (0..8)
            .map(|i| SeqStep {
                tokens: std::slice::from_ref(&next[i]),
                pos_start: lens[i],
                kv_start: lens[i],
                block_table: &tables[i],
                all_logits: false,
                shared: &[],
            })
            .collect();
        logits = model.forward(&mut kv, &steps, &mut ws).unwrap();
        lens.iter_mut().for_each(|l| *l += 1);
    }
    for i in 0..8 {
        assert_eq!(together[i], alone[i], "sequence {i} differs in a batch");
    }
}
