//! Multiverse and NPR as their authors' engines run them, on a tiny model
//! whose vocabulary has the protocols' tags as added special tokens (as
//! the released checkpoints' tokenizers do: Multiverse `train/utils.py`
//! 11-14, NPR `npr-beta/train/utils.py` 20-29), so every tag is one token
//! and the reference's token sequences can be written down exactly:
//! - a child's prompt is the parent's ids, then `\n`, `<Path>`, `\n`,
//!   label, `:` (Multiverse-Engine `schedule_batch.py` 1584-1585);
//! - a child that writes `</Path>` keeps one more sampled token (1562-1565),
//!   end of sequence included, unless its length limit falls first;
//! - the merge keeps child 0 from its `\n`, children 1.. from `<Path>`, and
//!   the parent continues with `<Conclusion>`, `\n` at p + the longest
//!   child (`scheduler.py` 1536-1577);
//! - the parent after the merge decodes what one dense forward over those
//!   ids, at those positions, with those visibilities predicts;
//! - a root stops on `</Path>` / `</step>` too, keeping one token;
//! - no fork within 30 (NPR: 1024) tokens of the request's budget.
//!
//! Models rigged to predict from the last token (`common::write_rigged`)
//! force the exact token sequences these cases need.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use weft_engine::{Engine, EngineConfig, FinishReason, RequestSpec, Response};
use weft_model::sampling::argmax;
use weft_model::{LoadOptions, Model, Tokenizer};

mod common;

const TAGS: &[&str] = &[
    "<Parallel>",
    "</Parallel>",
    "<Goal>",
    "</Goal>",
    "<Outline>",
    "</Outline>",
    "<Path>",
    "</Path>",
    "<Conclusion>",
    "</Conclusion>",
    "<guideline>",
    "</guideline>",
    "<plan>",
    "</plan>",
    "<step>",
    "</step>",
    "<takeaway>",
    "</takeaway>",
];

/// SmolLM2's tokenizer with the protocols' tags added as special tokens,
/// saved as an HF folder in `dir`; returns the vocabulary size.
fn write_tokenizer(dir: &Path) -> usize {
    let home = std::env::var_os("HOME").expect("HOME");
    let gguf = Path::new(&home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut inner = Tokenizer::load(&gguf).unwrap().inner().clone();
    let added: Vec<tokenizers::AddedToken> = TAGS
        .iter()
        .map(|t| tokenizers::AddedToken::from(*t, true))
        .collect();
    inner.add_special_tokens(&added);
    inner.save(dir.join("tokenizer.json"), false).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>"}"#,
    )
    .unwrap();
    inner.get_vocab_size(true)
}

/// A tiny model and the tokenizer above; `rig`: the tag the model always
/// predicts (see `common::write_tiny`).
fn tiny(rig: Option<&str>) -> (Model, Tokenizer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let vocab = write_tokenizer(dir.path());
    let tok = Tokenizer::load(dir.path()).unwrap();
    let rig = rig.map(|t| tok.token_to_id(t).unwrap());
    common::write_tiny(dir.path(), vocab, rig);
    let opts = LoadOptions {
        threads: Some(1),
        batch_invariant: true,
        ..Default::default()
    };
    (Model::load(dir.path(), &opts).unwrap(), tok, dir)
}

/// The id of `text`, which must encode as one token.
fn single(tok: &Tokenizer, text: &str) -> u32 {
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(ids.len(), 1, "{text:?} is not one token: {ids:?}");
    ids[0]
}

/// A tiny model that predicts from the last token alone
/// (`common::write_rigged`): `next` after each `(input, next)` pair,
/// `default` after any other token. Each text must be one token.
fn bigram(default: &str, after: &[(&str, &str)]) -> (Model, Tokenizer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let vocab = write_tokenizer(dir.path());
    let tok = Tokenizer::load(dir.path()).unwrap();
    let pairs = after
        .iter()
        .map(|(a, b)| (single(&tok, a), single(&tok, b)))
        .collect();
    common::write_rigged(dir.path(), vocab, Some((single(&tok, default), pairs)));
    let opts = LoadOptions {
        threads: Some(1),
        batch_invariant: true,
        ..Default::default()
    };
    (Model::load(dir.path(), &opts).unwrap(), tok, dir)
}

/// The protocol `name` with `options`, as a request's.
fn protocol(name: &str, options: &[(&str, &str)]) -> Arc<dyn weft_protocol::Protocol> {
    let options: Vec<(String, String)> = options
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Arc::from(weft_protocol::with_options(name, &options).unwrap())
}

const MV_PROMPT: &str = "Q: 17 * 23?\n<Parallel>\n<Goal>\n<Outline>\n1: 17 * 20.\n</Outline>\n<Outline>\n2: 17 * 3.\n</Outline>\n</Goal>";

/// Runs `prompt` with children limited to `gen` tokens. The root may write
/// 64: the engines refuse forks near the request's budget (Multiverse
/// within 30 tokens of it), and NPR's 1024-token guard, more than the tiny
/// model's context, is lowered to Multiverse's 30.
fn run(model: &Model, tok: &Tokenizer, protocol: &str, prompt: &str, gen: usize) -> Response {
    let options = [("fork_budget_margin".to_string(), "30".to_string())];
    let mut spec = RequestSpec::text(prompt.to_string()).with_protocol(Arc::from(
        weft_protocol::with_options(protocol, &options).unwrap(),
    ));
    spec.max_tokens = Some(64);
    run_spec(model, tok, spec, gen)
}

fn run_spec(model: &Model, tok: &Tokenizer, mut spec: RequestSpec, gen: usize) -> Response {
    let cfg = EngineConfig {
        max_tokens_per_thread: gen,
        max_depth: 1,
        ..Default::default()
    };
    spec.max_thread_tokens.get_or_insert(gen);
    let mut engine = Engine::new(model, tok, cfg).unwrap();
    engine.run(vec![spec], &mut |_| {}).unwrap().remove(0)
}

fn id(tok: &Tokenizer, t: &str) -> u32 {
    tok.token_to_id(t).unwrap()
}

/// A model that always predicts `</Path>`: each child writes `</Path>`,
/// keeps one more sampled token (`</Path>` again), and the join appends
/// `<Conclusion>` `\n`: the reference engine's ids exactly.
#[test]
fn multiverse_children_and_join_are_the_reference_engines_ids() {
    let (model, tok, _dir) = tiny(Some("</Path>"));
    let r = run(&model, &tok, "multiverse", MV_PROMPT, 8);
    assert_eq!(r.stats.forks, 1, "{:?}", r.stats);
    assert_eq!(r.stats.kv_merge_joins, 1, "{:?}", r.stats);
    let prefix = tok.encode(MV_PROMPT, true).unwrap();
    let nl = tok.encode("\n", false).unwrap();
    assert_eq!(nl.len(), 1);
    let close = id(&tok, "</Path>");
    for (i, child) in r.threads[1..].iter().enumerate() {
        let label = tok.encode(&format!("{}:", i + 1), false).unwrap();
        let mut want = prefix.clone();
        want.extend(&nl);
        want.push(id(&tok, "<Path>"));
        want.extend(&nl);
        want.extend(&label);
        want.extend([close, close]);
        assert_eq!(child.tokens, want, "child {i}");
        assert_eq!(child.text, "</Path></Path>", "child {i}");
    }
    let joined =
        format!("{MV_PROMPT}\n<Path>\n1:</Path></Path><Path>\n2:</Path></Path><Conclusion>\n");
    let root = &r.threads[0];
    assert_eq!(
        root.tokens[..2],
        [id(&tok, "<Conclusion>"), nl[0]],
        "the parent continues with `<Conclusion>` `\\n`"
    );
    assert!(
        r.text.starts_with(&joined[MV_PROMPT.len()..]),
        "{:?}",
        r.text
    );
    // Computed at the join: each child's kept token (sampled, no KV yet)
    // and the two appended tokens; nothing of the children recomputed.
    assert_eq!(r.stats.join_tokens_computed, 2 + 2, "{:?}", r.stats);
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Prefix,
    Lead,
    Child(usize),
    Parent,
}

/// Random weights: after the merge the parent decodes exactly what the
/// dense forward over the reference layout predicts (child 0 from its
/// `\n` at p, children 1.. from `<Path>`/`<step>` at p+1, masked from each
/// other; the parent at p + the longest child), for both protocols.
#[test]
fn after_a_merge_the_parent_decodes_as_the_reference_layout_predicts() {
    static MODEL: OnceLock<(Model, Tokenizer, tempfile::TempDir)> = OnceLock::new();
    let (model, tok, _) = MODEL.get_or_init(|| tiny(None));
    let npr_prompt = "Q: x?\n<guideline>\n<plan>\n1: Try x = 1.\n</plan>\n<plan>\n2: Try x = 2.\n</plan>\n<plan>\n3: Try x = 3.\n</plan>\n</guideline>";
    for (protocol, prompt, append, tag) in [
        ("multiverse", MV_PROMPT, "<Conclusion>\n", "<Path>"),
        ("npr", npr_prompt, "<takeaway>\n", "<step>"),
    ] {
        let r = run(model, tok, protocol, prompt, 6);
        assert_eq!(r.stats.kv_merge_joins, 1, "{protocol}: {:?}", r.stats);
        let prefix = tok.encode(prompt, true).unwrap();
        let p = prefix.len();
        let mut tokens = prefix.clone();
        let mut positions: Vec<usize> = (0..p).collect();
        let mut parts = vec![Part::Prefix; p];
        let mut longest = 0;
        for (i, child) in r.threads[1..].iter().enumerate() {
            let own = &child.tokens[p..];
            assert_eq!(
                own[1],
                id(tok, tag),
                "{protocol}: child {i} starts `\\n{tag}`"
            );
            let skip = usize::from(i > 0);
            tokens.extend(&own[skip..]);
            positions.extend(p + skip..p + own.len());
            if i == 0 {
                parts.push(Part::Lead);
            }
            parts.extend(std::iter::repeat_n(Part::Child(i), own.len() - 1));
            longest = longest.max(own.len());
        }
        let root = &r.threads[0];
        let appended = tok.encode(append, false).unwrap();
        assert_eq!(root.tokens[..appended.len()], appended[..], "{protocol}");
        assert!(
            root.tokens.len() > appended.len() + 2,
            "{protocol}: {:?}",
            r.text
        );
        let parent_at = tokens.len();
        tokens.extend(&root.tokens);
        positions.extend(p + longest..p + longest + root.tokens.len());
        parts.extend(std::iter::repeat_n(Part::Parent, root.tokens.len()));
        let visible = |i: usize, j: usize| {
            j <= i
                && match (parts[i], parts[j]) {
                    (Part::Child(a), Part::Child(b)) => a == b,
                    _ => true,
                }
        };
        let vocab = model.config.vocab_size;
        let wrong = |positions: &[usize], mask: &dyn Fn(usize, usize) -> bool| {
            let logits = model.forward_masked(&tokens, positions, mask).unwrap();
            (parent_at + appended.len()..tokens.len())
                .filter(|&i| argmax(&logits[(i - 1) * vocab..i * vocab]) != tokens[i])
                .count()
        };
        assert_eq!(wrong(&positions, &visible), 0, "{protocol}: {:?}", r.text);
        // The check can fail: weft's old layout (every child's `\n` kept,
        // the parent one position earlier) predicts other tokens.
        let shifted: Vec<usize> = positions
            .iter()
            .enumerate()
            .map(|(i, &q)| if i >= parent_at { q - 1 } else { q })
            .collect();
        assert!(
            wrong(&shifted, &visible) > 0,
            "{protocol}: the layouts look alike"
        );
    }
}

/// A Multiverse child cut by its length loses its last sampled token, as
/// the engine merges `output_ids[:-1]` whatever ended the child
/// (Multiverse-Engine `scheduler.py`, `merge_zombie_batch_to_run`).
#[test]
fn a_child_cut_by_its_length_loses_its_last_token() {
    static MODEL: OnceLock<(Model, Tokenizer, tempfile::TempDir)> = OnceLock::new();
    let (model, tok, _) = MODEL.get_or_init(|| tiny(None));
    let r = run(model, tok, "multiverse", MV_PROMPT, 6);
    let prefix = tok.encode(MV_PROMPT, true).unwrap().len();
    let suffix = tok.encode("\n<Path>\n1:", false).unwrap().len();
    for child in &r.threads[1..] {
        assert!(!child.text.contains("</Path>"), "{:?}", child.text);
        assert_eq!(child.generated_tokens, 5, "{:?}", child.text);
        assert_eq!(child.tokens.len(), prefix + suffix + 5);
        assert_eq!(
            tok.decode(&child.tokens[prefix + suffix..]).unwrap(),
            child.text
        );
    }
}

const NPR_PROMPT: &str = "Q: x?\n<guideline>\n<plan>\n1: Try x = 1.\n</plan>\n<plan>\n2: Try x = 2.\n</plan>\n</guideline>";

/// The last token of a child's prompt suffix `\n<Path>\n{n}:`: the colon,
/// the same for every label.
fn colon(tok: &Tokenizer) -> &'static str {
    let last = |label: &str| *tok.encode(label, false).unwrap().last().unwrap();
    assert_eq!(last("1:"), last("2:"));
    assert_eq!(last("1:"), single(tok, ":"));
    ":"
}

/// End of sequence sampled right after `</Path>` / `</step>` is the one
/// token the engines keep after the close tag: their `check_finished`
/// returns on the pending stop before it looks for end of sequence
/// (Multiverse-Engine `schedule_batch.py` 697-715), and the merge takes
/// `output_ids[:-1]` of `</Path>`, EOS, t2. So the child is one token
/// longer than one that ends on the end of sequence, and the parent
/// continues one position later: at p + the longest child, its kept EOS
/// included. The position shows where the parent's context runs out.
#[test]
fn end_of_sequence_after_the_close_tag_is_the_kept_token() {
    for (name, prompt, tag, close, append) in [
        (
            "multiverse",
            MV_PROMPT,
            "<Path>",
            "</Path>",
            "<Conclusion>\n",
        ),
        ("npr", NPR_PROMPT, "<step>", "</step>", "<takeaway>\n"),
    ] {
        let (model, tok, _dir) = bigram("x", &[(":", close), (close, "<|im_end|>")]);
        colon(&tok);
        let prefix = tok.encode(prompt, true).unwrap();
        let p = prefix.len();
        let context = model.config.max_context;
        let mut spec = RequestSpec::text(prompt)
            .with_protocol(protocol(name, &[("fork_budget_margin", "30")]));
        spec.max_tokens = Some(context - p);
        let r = run_spec(&model, &tok, spec, 16);
        assert_eq!(r.stats.kv_merge_joins, 1, "{name}: {:?}", r.stats);
        let eos = single(&tok, "<|im_end|>");
        for (i, child) in r.threads[1..].iter().enumerate() {
            let mut want = prefix.clone();
            want.extend(tok.encode(&format!("\n{tag}\n{}:", i + 1), false).unwrap());
            want.extend([single(&tok, close), eos]);
            assert_eq!(child.tokens, want, "{name}: child {i}");
            assert_eq!(
                child.text,
                format!("{close}<|im_end|>"),
                "{name}: child {i}"
            );
        }
        let longest = r.threads[1..]
            .iter()
            .map(|c| c.tokens.len() - p)
            .max()
            .unwrap();
        let root = &r.threads[0];
        let appended = tok.encode(append, false).unwrap();
        assert_eq!(root.tokens[..appended.len()], appended[..], "{name}");
        // The parent decodes `x` until its next position is the context's.
        assert_eq!(r.finish_reason, FinishReason::Length, "{name}");
        assert_eq!(
            p + longest + root.tokens.len(),
            context,
            "{name}: the parent continues at p + the longest child"
        );
    }
}

/// The engines stop every request, the root included, on `</Path>` /
/// `</step>` (it is in every request's stop list): the root keeps one more
/// sampled token, the request ends (`stop`), and SGLang's detokenizer
/// trims the token after it. NPR: a root that writes `</step>` and then
/// `</guideline>` closing a guideline of its own does not fork; its engine
/// ends a thread whose output holds `</step>` at `</guideline>`.
#[test]
fn a_root_that_writes_the_close_tag_keeps_one_token_and_ends() {
    let npr_prompt = "Q: x?\n<guideline>\n<plan>\n1: Try x = 1.\n</plan>";
    for (name, prompt, after, want) in [
        (
            "multiverse",
            "Q: 17 * 23? 1:",
            [(":", "</Path>"), ("</Path>", "y")],
            "</Path>y",
        ),
        (
            "npr",
            npr_prompt,
            [("</plan>", "</step>"), ("</step>", "</guideline>")],
            "</step></guideline>",
        ),
    ] {
        let (model, tok, _dir) = bigram("x", &after);
        let last = *tok.encode(prompt, true).unwrap().last().unwrap();
        assert_eq!(
            last,
            single(&tok, after[0].0),
            "{name}: the prompt's last token"
        );
        let r = run(&model, &tok, name, prompt, 16);
        assert_eq!(r.text, want, "{name}");
        assert_eq!(r.finish_reason, FinishReason::Stop, "{name}");
        assert_eq!(r.stats.forks, 0, "{name}: {:?}", r.stats);
        assert_eq!(r.threads[0].generated_tokens, 2, "{name}");
    }
}

/// A parent that writes `</Path>` after a merge ends the same way: the
/// merged request is the root's, and no one's child.
#[test]
fn a_merged_root_that_writes_the_close_tag_ends_too() {
    let (model, tok, _dir) = bigram("</Path>", &[("</Path>", "\n")]);
    let r = run(&model, &tok, "multiverse", MV_PROMPT, 8);
    assert_eq!(r.stats.kv_merge_joins, 1, "{:?}", r.stats);
    for child in &r.threads[1..] {
        assert_eq!(child.text, "</Path>\n");
    }
    assert_eq!(
        r.text,
        "\n<Path>\n1:</Path>\n<Path>\n2:</Path>\n<Conclusion>\n</Path>\n"
    );
    let root = &r.threads[0];
    let ids: Vec<u32> = ["<Conclusion>", "\n", "</Path>", "\n"]
        .iter()
        .map(|t| single(&tok, t))
        .collect();
    assert_eq!(root.tokens, ids);
    assert_eq!(r.finish_reason, FinishReason::Stop);
}

/// Multiverse-Engine refuses a fork once
/// `right_most_pos - init_input_len >= max_new_tokens - 30`
/// (`schedule_batch.py`, `filter_batch`), i.e. once
/// the token after `</Goal>` is within 30 positions of the request's
/// budget, and the request decodes on; NPR's engine the same within 1024.
/// The margin is a protocol option.
#[test]
fn forks_are_refused_near_the_token_budget() {
    // The root writes `</Goal>` as its first token: the token after it is
    // 1 position past the prompt.
    let prompt = "Q: 17 * 23?\n<Parallel>\n<Goal>\n<Outline>\n1: 17 * 20.\n</Outline>\n<Outline>\n2: 17 * 3.\n</Outline>";
    let (model, tok, _dir) = bigram("</Path>", &[("</Outline>", "</Goal>")]);
    let go = |max_tokens: usize, options: &[(&str, &str)]| {
        let mut spec = RequestSpec::text(prompt).with_protocol(protocol("multiverse", options));
        spec.max_tokens = Some(max_tokens);
        run_spec(&model, &tok, spec, 8)
    };
    let refused = go(31, &[]);
    assert_eq!(refused.stats.forks, 0, "{:?}", refused.stats);
    let why = &refused.stats.refused_forks;
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(why[0].contains("31") && why[0].contains("30"), "{why:?}");
    // It decodes on, and stops on `</Path>` as any root.
    assert_eq!(refused.text, "</Goal></Path></Path>");
    assert_eq!(go(32, &[]).stats.forks, 1);
    assert_eq!(go(31, &[("fork_budget_margin", "none")]).stats.forks, 1);
    assert_eq!(go(31, &[("fork_budget_margin", "29")]).stats.forks, 1);
    // NPR's guard: 1024 tokens, more than this request's budget.
    let go = |options: &[(&str, &str)]| {
        let mut spec = RequestSpec::text(NPR_PROMPT).with_protocol(protocol("npr", options));
        spec.max_tokens = Some(200);
        run_spec(&model, &tok, spec, 8)
    };
    let refused = go(&[]);
    assert_eq!(refused.stats.forks, 0, "{:?}", refused.stats);
    assert!(refused.stats.refused_forks[0].contains("1024"));
    assert_eq!(go(&[("fork_budget_margin", "199")]).stats.forks, 1);
    assert_eq!(go(&[("fork_budget_margin", "200")]).stats.forks, 0);
}

/// The engines check a request's length before its stops, and merge
/// `output_ids[:-1]` whatever ended a child: a child whose limit falls on
/// `</Path>`, or on the token after it, loses that token and ends on its
/// length.
#[test]
fn the_length_limit_comes_before_the_close_tag() {
    let (model, tok, _dir) = bigram("x", &[(":", "</Path>"), ("</Path>", "\n")]);
    for (gen, want, n) in [(1, "", 0), (2, "</Path>", 1), (3, "</Path>\n", 2)] {
        let r = run(&model, &tok, "multiverse", MV_PROMPT, gen);
        assert_eq!(r.stats.kv_merge_joins, 1, "{gen}: {:?}", r.stats);
        for child in &r.threads[1..] {
            assert_eq!(child.text, want, "limit {gen}");
            assert_eq!(child.generated_tokens, n, "limit {gen}");
        }
    }
}
