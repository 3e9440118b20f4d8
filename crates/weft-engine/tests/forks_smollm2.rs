//! The engine on a real model (SmolLM2-135M, which was not trained on these
//! formats): prompts that end in a fork trigger make the engine parse the
//! fork, run the children batched over the shared prefix, join, and continue.

use std::sync::Arc;

use weft_engine::{Engine, EngineConfig, RequestSpec, Response};
use weft_model::{LoadOptions, Model, Tokenizer};

mod common;

fn model() -> (Model, Tokenizer) {
    let home = std::env::var_os("HOME").expect("HOME");
    let path =
        std::path::PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    (
        Model::load(
            &path,
            &LoadOptions {
                batch_invariant: true,
                ..Default::default()
            },
        )
        .unwrap(),
        Tokenizer::load(&path).unwrap(),
    )
}

fn run(
    model: &Model,
    tok: &Tokenizer,
    protocol: &str,
    prompts: &[String],
    cfg: EngineConfig,
) -> (Vec<Response>, usize, usize) {
    let mut engine = Engine::new(model, tok, cfg).unwrap();
    let before = engine.kv_blocks_available();
    let requests = prompts
        .iter()
        .map(|p| {
            // Forks under budgets of a few tokens: the engines' budget
            // guards would refuse them (`special_tokens.rs` tests those).
            RequestSpec::text(p.clone()).with_protocol(Arc::from(common::unguarded(protocol)))
        })
        .collect();
    let out = engine.run(requests, &mut |_| {}).unwrap();
    (out, before, engine.kv_blocks_available())
}

const TW_PROMPT: &str = "Question: how far apart are (1, 2) and (7, -7)?\n<think>\n<Parallel>\n<Outlines>\n<Outline>1: Compute (dx)^2.</Outline>\n<Outline>2: Compute (dy)^2.</Outline>\n<Outline>3: Add them.</Outline>\n<Outline>4: Take the square root.</Outline>\n</Outlines>";

#[test]
fn threadweaver_fork_runs_children_batched_and_joins() {
    let (model, tok) = model();
    let cfg = EngineConfig {
        max_tokens_per_thread: 16,
        ..Default::default()
    };
    let (out, before, after) = run(&model, &tok, "threadweaver", &[TW_PROMPT.to_string()], cfg);
    let r = &out[0];
    assert_eq!(r.threads.len(), 5, "root + 4 children: {:#?}", r.threads);
    assert!(r.threads[1..].iter().all(|t| t.parent == Some(0)));
    assert_eq!(r.stats.forks, 1);
    assert!(
        r.stats.max_batch_threads >= 4,
        "children were not batched: {}",
        r.stats.max_batch_threads
    );
    // Every child's result is in the joined parent text, in outline order.
    let mut at = 0;
    for (i, child) in r.threads[1..].iter().enumerate() {
        let label = format!("<Thread>\n{}:", i + 1);
        let pos = r.text[at..].find(&label).map(|p| p + at);
        assert!(
            pos.is_some(),
            "thread {} missing from the join: {:?}",
            i + 1,
            r.text
        );
        at = pos.unwrap();
        assert!(child.generated_tokens > 0);
    }
    // Children shared the parent's prompt KV instead of recomputing it.
    assert!(r.stats.prefill_tokens_saved >= 4 * r.threads[0].prompt_tokens);
    assert!(r.stats.total_tokens > r.stats.critical_path_tokens);
    assert_eq!(before, after, "blocks leaked");
}

#[test]
fn apr_prompt_fork_runs_sub_searches() {
    let trace = include_str!("../../weft-protocol/tests/fixtures/apr_trace_example.txt");
    let first = trace.split("===== main_call 0 =====\n").nth(1).unwrap();
    let end =
        first.find("<End Calling Sub Searches>").unwrap() + "<End Calling Sub Searches>".len();
    let prompt = first[..end].to_string();
    let (model, tok) = model();
    let cfg = EngineConfig {
        max_tokens_per_thread: 12,
        ..Default::default()
    };
    let (out, before, after) = run(&model, &tok, "apr", &[prompt], cfg);
    let r = &out[0];
    assert_eq!(r.threads.len(), 3, "{:#?}", r.threads);
    assert_eq!(r.stats.forks, 1);
    // The join replaced the calling block by the sub-search results block.
    assert!(
        r.text.contains("<Sub Searches>") && r.text.contains("<End Sub Searches>"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("at Node #0,1,1>") && r.text.contains("at Node #0,1,0>"),
        "{}",
        r.text
    );
    assert_eq!(before, after, "blocks leaked");
}

#[test]
fn two_requests_share_one_batch_and_limits_hold() {
    let (model, tok) = model();
    let cfg = EngineConfig {
        max_tokens_per_thread: 8,
        max_children_per_fork: 3,
        ..Default::default()
    };
    let prompts = vec![
        TW_PROMPT.to_string(),
        TW_PROMPT.replace("(7, -7)", "(4, 6)"),
    ];
    let (out, _, _) = run(&model, &tok, "threadweaver", &prompts, cfg);
    for r in &out {
        // 4 outlines > 3 allowed children: the fork is refused, the root decodes on alone.
        assert_eq!(r.threads.len(), 1);
        assert_eq!(r.stats.forks, 0);
        assert!(
            r.stats
                .refused_forks
                .iter()
                .any(|x| x.contains("engine limit")),
            "{:?}",
            r.stats.refused_forks
        );
        assert!(r.threads[0].generated_tokens <= 8);
    }
}

#[test]
fn small_kv_budget_queues_instead_of_failing() {
    let (model, tok) = model();
    // 3 MiB holds 8 blocks of 16 tokens (SmolLM2: 23 KiB of KV per token).
    // The ~80-token prompt takes 5; each of the 4 children needs its own copy
    // of the partial last block on its first step (copy-on-write), so they
    // cannot all hold KV at once whatever they generate: the scheduler must
    // queue or preempt.
    let cfg = EngineConfig {
        max_tokens_per_thread: 32,
        kv_budget_mib: 3,
        ..Default::default()
    };
    let (out, before, after) = run(&model, &tok, "threadweaver", &[TW_PROMPT.to_string()], cfg);
    let r = &out[0];
    // The root may fork again after the join (the model writes more outlines).
    assert!(r.threads.len() >= 5 && r.threads[1..5].iter().all(|t| t.parent == Some(0)));
    assert!(r.threads[1..].iter().all(|t| t.generated_tokens > 0));
    // Under that pressure the children could not all decode at once: they
    // queued (or were preempted and recomputed) instead of failing.
    assert!(
        r.stats.max_batch_threads < 4,
        "the budget was meant to force queueing: {} threads decoded together",
        r.stats.max_batch_threads
    );
    assert_eq!(before, after);
}

const MV_PROMPT: &str = "Question: what is 17 * 23?\n<Parallel>\n<Goal>\n<Outline>1: Compute 17 * 20.</Outline>\n<Outline>2: Compute 17 * 3.</Outline>\n<Outline>3: Add the two parts.</Outline>\n</Goal>";

#[test]
fn multiverse_join_merges_kv_without_recomputing_children() {
    let (model, tok) = model();
    let base = EngineConfig {
        max_tokens_per_thread: 16,
        max_depth: 1,
        ..Default::default()
    };
    let (merged, before, after) = run(
        &model,
        &tok,
        "multiverse",
        &[MV_PROMPT.to_string()],
        base.clone(),
    );
    assert_eq!(before, after, "blocks leaked");
    let r = &merged[0];
    assert_eq!(r.stats.forks, 1, "{:?}", r.stats);
    assert_eq!(r.stats.kv_merge_joins, 1, "{:?}", r.stats);
    assert_eq!(r.threads.len(), 4);
    // Every path is in the root's text, in order, then the conclusion, as
    // the authors' engine builds it: the lead `\n` once, before path 1.
    let mut at = 0;
    for (i, child) in r.threads[1..].iter().enumerate() {
        let lead = if i == 0 { "\n" } else { "" };
        let piece = format!("{lead}<Path>\n{}:{}", i + 1, child.text);
        let pos = r.text[at..].find(&piece).map(|p| p + at);
        assert!(pos.is_some(), "path {} missing: {:?}", i + 1, r.text);
        at = pos.unwrap() + piece.len();
    }
    assert!(r.text[at..].starts_with("<Conclusion>\n"), "{:?}", r.text);
    // A path that wrote `</Path>` kept exactly one more sampled token, as
    // the authors' engine does (`output_ids[:-1]` of `</Path>`, t1, t2),
    // unless its length limit fell on that token: the engine checks the
    // length first, and the token is dropped as any child's last one at its
    // limit (16 tokens, so 15 are left).
    let mut closed = 0;
    for child in r.threads[1..]
        .iter()
        .filter(|c| c.generated_tokens < base.max_tokens_per_thread - 1)
    {
        let own = &child.tokens[child.tokens.len() - child.generated_tokens..];
        let Some(k) = (1..=own.len()).find(|&k| tok.decode(&own[..k]).unwrap().contains("</Path>"))
        else {
            continue;
        };
        closed += 1;
        assert_eq!(
            own.len() - k,
            1,
            "child {} kept {} tokens after `</Path>`: {:?}",
            child.id,
            own.len() - k,
            child.text
        );
    }
    assert!(closed > 0, "no path wrote `</Path>`: {:?}", r.text);

    // The same request re-prefilled at the join recomputes every child's
    // tokens; the merge computes only closing text and `<Conclusion>`.
    let reprefill = EngineConfig {
        kv_merge: false,
        ..base
    };
    let (plain, before, after) = run(
        &model,
        &tok,
        "multiverse",
        &[MV_PROMPT.to_string()],
        reprefill,
    );
    assert_eq!(before, after, "blocks leaked");
    let q = &plain[0];
    assert_eq!(q.stats.kv_merge_joins, 0);
    let child_tokens: usize = r.threads[1..].iter().map(|t| t.generated_tokens).sum();
    assert!(
        q.stats.join_tokens_computed >= child_tokens,
        "re-prefill computed {} tokens at the join, the children generated {child_tokens}",
        q.stats.join_tokens_computed
    );
    // At most: each path's last sampled token and the token kept after
    // `</Path>` (nothing is closed), then `<Conclusion>\n`.
    let append = tok.encode("<Conclusion>\n", false).unwrap().len();
    assert!(
        r.stats.join_tokens_computed <= 3 * 2 + append,
        "the merge computed {} tokens at the join",
        r.stats.join_tokens_computed
    );
    // Both joins started from the same children.
    for (a, b) in r.threads[1..].iter().zip(&q.threads[1..]) {
        assert_eq!(a.text, b.text);
    }
}

/// Runs two requests unconstrained, then under a KV budget small enough
/// that the scheduler must preempt (drop a newer thread's KV and recompute
/// it later) but large enough that no thread is cut short: greedy decoding
/// gives the same trees both times.
fn preemption_gives_the_same_result(
    protocol: &str,
    prompt: &str,
    block_size: usize,
    mib: usize,
    gen: usize,
) {
    let (model, tok) = model();
    let base = EngineConfig {
        max_tokens_per_thread: gen,
        max_depth: 1,
        block_size,
        ..Default::default()
    };
    let prompts = [prompt.to_string(), prompt.replace("Question", "Problem")];
    let (free, _, _) = run(&model, &tok, protocol, &prompts, base.clone());
    let tight = EngineConfig {
        kv_budget_mib: mib,
        ..base
    };
    let (constrained, before, after) = run(&model, &tok, protocol, &prompts, tight);
    assert_eq!(before, after, "blocks leaked");
    let preemptions: usize = constrained.iter().map(|r| r.stats.preemptions).sum();
    assert!(preemptions > 0, "no preemption happened: {constrained:#?}");
    for (a, b) in free.iter().zip(&constrained) {
        assert_eq!(a.stats.preemptions, 0);
        assert!(
            b.stats.refused_forks.is_empty(),
            "{:?}",
            b.stats.refused_forks
        );
        assert_eq!(a.text, b.text);
        assert_eq!(a.threads.len(), b.threads.len());
        for (x, y) in a.threads.iter().zip(&b.threads) {
            assert_eq!(x.text, y.text, "thread {} differs after preemption", x.id);
        }
        assert_eq!(a.stats.forks, b.stats.forks);
        assert_eq!(a.stats.kv_merge_joins, b.stats.kv_merge_joins);
    }
}

#[test]
fn preemption_recomputes_to_the_same_greedy_result() {
    // 7 MiB: 79 blocks of 4 tokens (SmolLM2 holds 22.5 KiB of KV a token);
    // each request alone peaks near 50 blocks, the two together do not fit.
    preemption_gives_the_same_result("threadweaver", TW_PROMPT, 4, 7, 16);
}

/// Two Multiverse requests in 8 MiB (45 blocks of 8 tokens): the newer
/// one's threads are preempted, also at the older one's merge (which needs
/// room for its children's closing tokens; falling back to a re-prefill
/// there would change the layout and so the text). The older request's
/// result is exactly the unconstrained one. The newer one either matches
/// too or, where the merged segments (which are not preempted) leave no
/// room, has a thread cut and says so in words: first come, first served.
#[test]
fn preemption_under_kv_merge_keeps_the_older_request_exact() {
    let (model, tok) = model();
    let base = EngineConfig {
        max_tokens_per_thread: 20,
        max_depth: 1,
        block_size: 8,
        ..Default::default()
    };
    let prompts = [
        MV_PROMPT.to_string(),
        MV_PROMPT.replace("Question", "Problem"),
    ];
    let (free, _, _) = run(&model, &tok, "multiverse", &prompts, base.clone());
    let tight = EngineConfig {
        kv_budget_mib: 8,
        ..base
    };
    let (constrained, before, after) = run(&model, &tok, "multiverse", &prompts, tight);
    assert_eq!(before, after, "blocks leaked");
    assert!(
        constrained
            .iter()
            .map(|r| r.stats.preemptions)
            .sum::<usize>()
            > 0
    );
    let (a, b) = (&free[0], &constrained[0]);
    assert!(
        b.stats.refused_forks.is_empty(),
        "{:?}",
        b.stats.refused_forks
    );
    assert_eq!(a.text, b.text);
    assert_eq!(a.threads.len(), b.threads.len());
    for (x, y) in a.threads.iter().zip(&b.threads) {
        assert_eq!(x.text, y.text, "thread {} differs", x.id);
    }
    assert_eq!(a.stats.kv_merge_joins, b.stats.kv_merge_joins);
    assert_eq!(b.stats.kv_merge_joins, 1, "the older request merged");
    let (a, b) = (&free[1], &constrained[1]);
    if a.text != b.text || a.stats.kv_merge_joins != b.stats.kv_merge_joins {
        assert!(
            b.stats
                .refused_forks
                .iter()
                .any(|n| n.contains("the KV cache") && n.contains("cannot hold more")),
            "the newer request differs without saying why: {:?}",
            b.stats.refused_forks
        );
    }
}

#[test]
fn a_reused_engine_answers_each_batch_with_its_own_responses() {
    // `weft eval` runs problem after problem on one engine: every call must
    // return that call's responses (not an earlier call's), the same as a
    // fresh engine gives, and give every block back.
    let (model, tok) = model();
    let cfg = EngineConfig {
        max_tokens_per_thread: 12,
        ..Default::default()
    };
    let prompts = [
        TW_PROMPT.to_string(),
        "The capital of France is".to_string(),
    ];
    let fresh: Vec<Response> = prompts
        .iter()
        .map(|p| {
            run(
                &model,
                &tok,
                "threadweaver",
                std::slice::from_ref(p),
                cfg.clone(),
            )
            .0
        })
        .map(|mut r| r.remove(0))
        .collect();
    assert_ne!(fresh[0].text, fresh[1].text);
    let mut engine = Engine::new(&model, &tok, cfg).unwrap();
    let before = engine.kv_blocks_available();
    for (p, want) in prompts.iter().zip(&fresh) {
        let request = RequestSpec::text(p.clone())
            .with_protocol(Arc::from(weft_protocol::by_name("threadweaver").unwrap()));
        let mut out = engine.run(vec![request], &mut |_| {}).unwrap();
        assert_eq!(out.len(), 1, "responses of earlier calls came back too");
        let got = out.remove(0);
        assert_eq!(got.text, want.text);
        assert_eq!(got.threads.len(), want.threads.len());
        assert_eq!(got.stats.total_tokens, want.stats.total_tokens);
        assert_eq!(engine.kv_blocks_available(), before, "blocks leaked");
    }
}

/// A re-prefill join keeps each child's ids as it sampled them (as
/// ThreadWeaver's loop concatenates ids), even where re-encoding the joined
/// text would split it otherwise. Sampling finds children with such
/// non-canonical splits; the test fails if none turns up, so it checks
/// what it claims.
#[test]
fn a_reprefill_join_keeps_the_ids_children_sampled() {
    let (model, tok) = model();
    let cfg = EngineConfig {
        max_tokens_per_thread: 24,
        max_depth: 1,
        ..Default::default()
    };
    let mut non_canonical = 0;
    for seed in 0..24u64 {
        let mut spec = RequestSpec::text(TW_PROMPT.to_string())
            .with_protocol(Arc::from(weft_protocol::by_name("threadweaver").unwrap()));
        spec.sampling.temperature = 1.0;
        spec.sampling.seed = seed;
        spec.max_tokens = Some(4);
        let mut engine = Engine::new(&model, &tok, cfg.clone()).unwrap();
        let r = engine.run(vec![spec], &mut |_| {}).unwrap().remove(0);
        assert_eq!(r.stats.forks, 1, "{:?}", r.stats);
        let root = &r.threads[0].tokens;
        for child in &r.threads[1..] {
            let ids = &child.tokens[child.tokens.len() - child.generated_tokens..];
            if tok.decode(ids).unwrap() != child.text {
                continue; // a stop string cut the last token's text
            }
            if tok.encode(&child.text, false).unwrap() != ids {
                non_canonical += 1;
            }
            assert!(
                root.windows(ids.len()).any(|w| w == ids),
                "seed {seed}: the joined ids lost child {}'s sampled ids {ids:?} ({:?})",
                child.id,
                child.text
            );
        }
        if non_canonical >= 2 && seed >= 3 {
            break;
        }
    }
    assert!(
        non_canonical > 0,
        "no child sampled a non-canonical split: the test checked nothing"
    );
}

/// A protocol that writes text in place of the first end of sequence
/// (`Protocol::on_end_of_sequence`, Parallel-R1's hook) and otherwise
/// behaves as Parallel-R1.
#[derive(Debug, Default)]
struct EosOnce(weft_protocol::parallel_r1::ParallelR1);

const MARK: &str = " Also, here are three colours:";

impl weft_protocol::Protocol for EosOnce {
    fn name(&self) -> &'static str {
        "eos-once"
    }
    fn triggers(&self) -> &'static [&'static str] {
        self.0.triggers()
    }
    fn rules(&self) -> weft_protocol::Rules {
        self.0.rules()
    }
    fn on_trigger(
        &self,
        text: &str,
        trigger: &'static str,
        end: usize,
        ctx: weft_protocol::ForkContext,
    ) -> weft_protocol::Scan {
        self.0.on_trigger(text, trigger, end, ctx)
    }
    fn child_stop(&self) -> weft_protocol::ChildStop {
        self.0.child_stop()
    }
    fn child_result(
        &self,
        generated: &str,
        end: weft_protocol::ChildEnd,
    ) -> weft_protocol::ChildResult {
        self.0.child_result(generated, end)
    }
    fn on_end_of_sequence(&self, text: &str) -> Option<&'static str> {
        (!text.contains(MARK)).then_some(MARK)
    }
    fn join(
        &self,
        parent: &str,
        fork: &weft_protocol::Fork,
        children: &[weft_protocol::ChildResult],
        ctx: weft_protocol::ForkContext,
    ) -> Result<weft_protocol::Join, weft_protocol::ProtocolError> {
        self.0.join(parent, fork, children, ctx)
    }
}

/// End of sequence a protocol replaces (Parallel-R1 inside an open
/// `<Summary>`; here any first one) becomes that text, as one text event
/// carrying all its ids (a sampled token comes alone), and the thread
/// decodes on from it.
#[test]
fn text_written_in_place_of_end_of_sequence_is_decoded_on() {
    let (model, tok) = model();
    let prompt = tok
        .render_chat(&[weft_model::chat::Message::new("user", "Say OK.")])
        .unwrap();
    let mut engine = Engine::new(&model, &tok, EngineConfig::default()).unwrap();
    let mut spec = RequestSpec::text(prompt).with_protocol(Arc::new(EosOnce::default()));
    spec.max_tokens = Some(60);
    let mark = tok.encode(MARK, false).unwrap();
    let mut replaced = 0;
    let r = engine
        .run(vec![spec], &mut |e| {
            if let weft_engine::Event::Text {
                thread: 0,
                token_ids,
                ..
            } = e
            {
                if *token_ids == mark {
                    replaced += 1;
                }
            }
        })
        .unwrap()
        .remove(0);
    assert_eq!(replaced, 1, "{:?}", r.text);
    let at = r.text.find(MARK).expect("the replacement is in the text") + MARK.len();
    // Decoding went on from it.
    assert!(!r.text[at..].trim().is_empty(), "{:?}", r.text);
    assert!(
        r.finish_reason == weft_engine::FinishReason::Stop
            || r.finish_reason == weft_engine::FinishReason::Length
    );
}

/// NPR's children sample with the protocol's repetition penalty (1.02 by
/// default, as its engine sets at the fork and resets at the merge): a
/// strong penalty changes the children's greedy text.
#[test]
fn npr_children_sample_with_the_protocols_repetition_penalty() {
    let (model, tok) = model();
    let prompt = "Solve x^2 = 4.\n<guideline>\n<plan>\n1: Try x = 2 and check it again and again.\n</plan>\n<plan>\n2: Try x = -2 and check it again and again.\n</plan>\n</guideline>";
    let run_with = |penalty: &str| {
        let protocol = weft_protocol::with_options(
            "npr",
            &[
                ("repetition_penalty".to_string(), penalty.to_string()),
                // NPR's engine forks only with 1024 tokens of budget left.
                ("fork_budget_margin".to_string(), "none".to_string()),
            ],
        )
        .unwrap();
        let cfg = EngineConfig {
            max_tokens_per_thread: 24,
            max_depth: 1,
            ..Default::default()
        };
        let mut engine = Engine::new(&model, &tok, cfg).unwrap();
        let mut spec = RequestSpec::text(prompt.to_string()).with_protocol(Arc::from(protocol));
        spec.max_tokens = Some(8);
        engine.run(vec![spec], &mut |_| {}).unwrap().remove(0)
    };
    let off = run_with("1.0");
    let strong = run_with("3.0");
    assert_eq!(off.stats.forks, 1, "{:?}", off.stats);
    assert_eq!(strong.stats.forks, 1, "{:?}", strong.stats);
    let children =
        |r: &Response| -> Vec<String> { r.threads[1..].iter().map(|t| t.text.clone()).collect() };
    assert_ne!(
        children(&off),
        children(&strong),
        "the penalty changed nothing"
    );
    // Under a strong penalty a child repeats no token of its own.
    for child in &strong.threads[1..] {
        let own = &child.tokens[child.tokens.len() - child.generated_tokens..];
        let distinct: std::collections::HashSet<&u32> = own.iter().collect();
        assert!(
            distinct.len() + 2 >= own.len(),
            "child {} repeats under penalty 3: {:?}",
            child.id,
            child.text
        );
    }
}

/// The round cap counts the fork being joined: ThreadWeaver with
/// `max_fork_rounds=1` ends right after its first join, with 2 it decodes
/// on (the reference allows 16 forks: its 32 iterations).
#[test]
fn the_round_cap_ends_the_request_after_the_last_allowed_join() {
    let (model, tok) = model();
    let after_join = |rounds: &str| {
        let protocol = weft_protocol::with_options(
            "threadweaver",
            &[("max_fork_rounds".to_string(), rounds.to_string())],
        )
        .unwrap();
        let cfg = EngineConfig {
            max_tokens_per_thread: 40,
            max_depth: 1,
            ..Default::default()
        };
        let mut engine = Engine::new(&model, &tok, cfg).unwrap();
        // Short threads that close themselves (a thread cut by its limit
        // ends the request at the join whatever the cap).
        let prompt = "Q: distance?\n<Parallel>\n<Outlines>\n<Outline>1: dx.</Outline>\n<Outline>2: dy.</Outline>\n</Outlines>";
        let mut spec = RequestSpec::text(prompt.to_string()).with_protocol(Arc::from(protocol));
        spec.max_tokens = Some(8);
        let r = engine.run(vec![spec], &mut |_| {}).unwrap().remove(0);
        assert_eq!(r.stats.forks, 1, "{:?}", r.stats);
        for child in &r.threads[1..] {
            assert!(child.text.ends_with("</Thread>"), "{:?}", child.text);
        }
        r.threads[0].generated_tokens
    };
    assert_eq!(
        after_join("1"),
        0,
        "the last allowed join must end the request"
    );
    assert!(after_join("2") > 0, "a join below the cap must decode on");
}
