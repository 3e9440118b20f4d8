//! The engine's recorded samples replay under the trainer: for greedy
//! rollouts of the shipped APR model (real forks and joins), every token a
//! thread sampled must be the trainer's argmax at the position the record
//! gives, in the context it gives. This ties the engine's bookkeeping
//! (positions, rewritten contexts, ends of sequence) to what the policy
//! update trains on.

use std::path::PathBuf;

use weft_engine::{Engine, RequestSpec};
use weft_model::{LoadOptions, Model, Tokenizer};
use weft_rl::rollout::{engine_config, prompt, protocol, repeated_positions, search_line_weights};
use weft_rl::{Mode, Sequence};
use weft_train::model::Batch;

fn apr_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/countdown-apr")
}

#[test]
fn recorded_samples_are_the_trainers_greedy_choices() {
    let dir = apr_model();
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    let tok = Tokenizer::load(&dir).unwrap();
    let params = weft_train::export::load_model(&dir, &candle_core::Device::Cpu).unwrap();
    let problems: Vec<weft_tasks::Problem> = std::fs::read_to_string(dir.join("../heldout.jsonl"))
        .unwrap()
        .lines()
        .take(12)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            weft_tasks::Problem {
                nums: serde_json::from_value(v["nums"].clone()).unwrap(),
                target: v["target"].as_u64().unwrap(),
            }
        })
        .collect();
    let mut engine = Engine::new(&model, &tok, engine_config(512)).unwrap();
    let specs = problems
        .iter()
        .map(|p| RequestSpec::text(prompt(p, Mode::Apr)).with_protocol(protocol(Mode::Apr)))
        .collect();
    let responses = engine.run(specs, &mut |_| {}).unwrap();
    let (mut agree, mut total, mut eos, mut rewritten) = (0, 0, 0, 0);
    for r in &responses {
        let mut sampled = 0;
        for t in &r.threads {
            rewritten += t.sampled.len().saturating_sub(1);
            for seg in &t.sampled {
                sampled += seg.sampled.len();
                eos += seg
                    .sampled
                    .iter()
                    .filter(|s| s.0 == seg.tokens.len())
                    .count();
                let q = Sequence::of_segment(seg, 1.0).unwrap();
                let n = q.tokens.len() - 1;
                let batch = Batch {
                    rows: 1,
                    len: n,
                    input: q.tokens[..n].to_vec(),
                    target: q.tokens[1..].to_vec(),
                    weight: vec![1.0; n],
                    position: (0..n as u32).collect(),
                    segment: vec![0; n],
                    real_tokens: n,
                };
                let logits = params.forward(&batch).unwrap();
                let rows = logits.to_vec2::<f32>().unwrap();
                for (j, a) in q.advantage.iter().enumerate() {
                    if a.is_some() {
                        total += 1;
                        let best = rows[j]
                            .iter()
                            .enumerate()
                            .max_by(|x, y| x.1.total_cmp(y.1))
                            .unwrap()
                            .0;
                        agree += usize::from(best as u32 == q.tokens[j + 1]);
                    }
                }
            }
        }
        // Every generated token was sampled (ends of sequence are sampled
        // but not generated text).
        assert!(
            sampled >= r.stats.total_tokens,
            "{sampled} < {}",
            r.stats.total_tokens
        );
    }
    // Token-level credit for repeated search: every rollout with a repeated
    // child has marked tokens, and every marked token is in a line that
    // explores, records a node or calls a sub-search.
    let mut pieces = std::collections::HashMap::new();
    let mut with_duplicates = 0;
    for r in &responses {
        let kids: Vec<(usize, String)> = r
            .threads
            .iter()
            .filter_map(|t| {
                let head = &t.tokens[..t.prompt_tokens.min(t.tokens.len())];
                Some((t.parent?, tok.decode(head).unwrap()))
            })
            .collect();
        let dups =
            weft_protocol::apr::duplicate_children(kids.iter().map(|(p, s)| (*p, s.as_str())));
        let mut marked = 0;
        for seg in r.threads.iter().flat_map(|t| &t.sampled) {
            let at = repeated_positions(&tok, &mut pieces, seg);
            marked += at.len();
            let text = tok.decode(&seg.tokens).unwrap();
            for &pos in &at {
                let before = tok.decode(&seg.tokens[..pos]).unwrap();
                let line = text[before.rfind('\n').map_or(0, |i| i + 1)..]
                    .lines()
                    .next()
                    .unwrap_or("");
                assert!(
                    [
                        "Exploring Operation: ",
                        "Generated Node #",
                        "<Start Sub Search "
                    ]
                    .iter()
                    .any(|p| line.starts_with(p)),
                    "a marked token in {line:?}"
                );
            }
        }
        if dups > 0 {
            with_duplicates += 1;
            assert!(marked > 0, "{dups} repeated children, no marked token");
        }
    }
    assert!(
        with_duplicates > 0,
        "no rollout repeated a child: the check above tested nothing"
    );
    let forks: usize = responses.iter().map(|r| r.stats.forks).sum();
    assert!(forks >= 3, "the rollouts should fork: {forks}");
    assert!(
        rewritten >= 3,
        "joins start new sampled segments: {rewritten}"
    );
    assert!(eos >= 6, "ends of sequence are recorded: {eos}");
    // The engine's kernels and the trainer's differ at rounding level: a
    // near-tie may go the other way, nothing more.
    assert!(
        agree as f64 >= 0.995 * total as f64,
        "{agree} of {total} sampled tokens are the trainer's argmax"
    );
}

/// A repeat at a thread's first node, behind the `<s>` the engine puts
/// before every prompt, is marked: exactly the repeated lines' tokens.
#[test]
fn a_repeat_at_the_first_node_behind_a_bos_is_marked() {
    let tok = Tokenizer::load(&apr_model()).unwrap();
    let prompt = prompt(
        &weft_tasks::Problem {
            nums: vec![3, 5, 7],
            target: 22,
        },
        Mode::Apr,
    );
    // The prompt ends without a newline; the model writes it.
    let seg_text = "
Exploring Operation: 3+7=10, Resulting Numbers: [5, 10]
Generated Node #0,0: 22:[5, 10] Operation: 3+7=10
Exploring Operation: 7+3=10, Resulting Numbers: [5, 10]
Generated Node #0,1: 22:[5, 10] Operation: 7+3=10
Exploring Operation: 3*7=21, Resulting Numbers: [5, 21]
";
    let mut tokens = tok.encode_prompt(&prompt, false).unwrap();
    assert!(
        tok.decode(&tokens[..1]).unwrap().starts_with('<'),
        "the prompt should start with a special token, as the engine's do"
    );
    let first = tokens.len();
    tokens.extend(tok.encode(seg_text, false).unwrap());
    let seg = weft_engine::SampledSegment {
        sampled: (first..tokens.len()).map(|i| (i, tokens[i])).collect(),
        tokens,
    };
    let at = repeated_positions(&tok, &mut std::collections::HashMap::new(), &seg);
    assert!(at.windows(2).all(|w| w[1] == w[0] + 1), "{at:?}");
    let ids: Vec<u32> = at.iter().map(|&i| seg.tokens[i]).collect();
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "Exploring Operation: 7+3=10, Resulting Numbers: [5, 10]\n\
         Generated Node #0,1: 22:[5, 10] Operation: 7+3=10\n"
    );
    // Zero-sum weights: the three lines at #0 hold one repeat, so the two
    // others get +1/2 and the repeat -1, token for token.
    let weights = search_line_weights(&tok, &mut std::collections::HashMap::new(), &seg, Mode::Apr);
    let text_of = |w: f32| {
        let ids: Vec<u32> = weights
            .iter()
            .filter(|x| x.weight == w)
            .map(|x| seg.tokens[x.pos])
            .collect();
        tok.decode(&ids).unwrap()
    };
    assert_eq!(text_of(-1.0), tok.decode(&ids).unwrap());
    assert_eq!(
        text_of(0.5),
        "Exploring Operation: 3+7=10, Resulting Numbers: [5, 10]\n\
         Generated Node #0,0: 22:[5, 10] Operation: 3+7=10\n\
         Exploring Operation: 3*7=21, Resulting Numbers: [5, 21]\n"
    );
    assert!(weights.iter().all(|x| [-1.0, 0.5].contains(&x.weight)));
    // The choice: each line's operation, and nothing else.
    let ids: Vec<u32> = weights
        .iter()
        .filter(|x| x.choice)
        .map(|x| seg.tokens[x.pos])
        .collect();
    assert_eq!(tok.decode(&ids).unwrap(), "3+7=107+3=103*7=21");
    // A line that does not keep the state's books (the numbers left out of
    // order) is invalid: all of it weighs -1, the choice and the rest.
    let bad = seg_text.replace("[5, 21]", "[21, 5]");
    let mut tokens = tok.encode_prompt(&prompt, false).unwrap();
    tokens.extend(tok.encode(&bad, false).unwrap());
    let seg = weft_engine::SampledSegment {
        sampled: (first..tokens.len()).map(|i| (i, tokens[i])).collect(),
        tokens,
    };
    let weights = search_line_weights(&tok, &mut std::collections::HashMap::new(), &seg, Mode::Apr);
    let ids: Vec<u32> = weights
        .iter()
        .filter(|x| x.weight == -1.0 && x.choice && !x.repeated)
        .map(|x| seg.tokens[x.pos])
        .collect();
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "Exploring Operation: 3*7=21, Resulting Numbers: [21, 5]\n"
    );
}

/// A sampled line that breaks APR's trace grammar (text a collapsed run
/// wrote: a state line with no state, a goal after giving up) weighs -1
/// on every token in APR mode, and nothing in sequential mode, whose
/// grammar is SoS+'s.
#[test]
fn a_malformed_line_weighs_minus_one_in_apr_mode_only() {
    let tok = Tokenizer::load(&apr_model()).unwrap();
    let problem = weft_tasks::Problem {
        nums: vec![3, 5, 7],
        target: 22,
    };
    let seg_text = "
Exploring Operation: 3+7=10, Resulting Numbers: [5, 10]
Generated Node #0,0: 22:[5, 10] Operation: 3+7=10
Current State: 81: 81: 81]
No solution found.
22,22 equal: Goal Reached
";
    let mut tokens = tok
        .encode_prompt(&prompt(&problem, Mode::Apr), false)
        .unwrap();
    let first = tokens.len();
    tokens.extend(tok.encode(seg_text, false).unwrap());
    let seg = weft_engine::SampledSegment {
        sampled: (first..tokens.len()).map(|i| (i, tokens[i])).collect(),
        tokens,
    };
    let weights = search_line_weights(&tok, &mut std::collections::HashMap::new(), &seg, Mode::Apr);
    let ids: Vec<u32> = weights
        .iter()
        .filter(|x| x.weight == -1.0 && x.choice && !x.repeated)
        .map(|x| seg.tokens[x.pos])
        .collect();
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "Current State: 81: 81: 81]\n22,22 equal: Goal Reached\n"
    );
    assert!(weights.iter().all(|x| x.weight == -1.0), "{weights:?}");
    let weights = search_line_weights(
        &tok,
        &mut std::collections::HashMap::new(),
        &seg,
        Mode::Sequential,
    );
    assert!(weights.is_empty(), "{weights:?}");
}
