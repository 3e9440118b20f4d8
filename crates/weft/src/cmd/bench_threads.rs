//! `weft bench threads`: B threads forked from one shared prefix, decoded
//! together, against `llama-batched-bench -pps` with the same shape in the
//! same run; plus fork latency, KV bytes held, and the cost of a join done
//! by merging the children's KV against one done by re-prefilling them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use weft_engine::{Engine, EngineConfig, Event, Prompt, RequestSpec};
use weft_kv::{BlockPool, BlockTable};
use weft_model::sampling::argmax;
use weft_model::{KvCache, KvSpan, Model, SeqStep, Tokenizer, Workspace};

use super::model_args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct ThreadsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Shared prefix length (tokens).
    #[arg(long, default_value_t = 512)]
    pub prefix: usize,
    /// New tokens per thread.
    #[arg(long, default_value_t = 128)]
    pub gen: usize,
    /// Thread counts, comma-separated.
    #[arg(long, default_value = "1,2,4,8,16", value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// The `llama-batched-bench` to compare with (default: the one
    /// `shared/tools/llama-cpp-anchor.sh` builds, when present).
    #[arg(long)]
    pub llama_batched_bench: Option<PathBuf>,
    /// Time weft only (no llama-batched-bench run, no ratios).
    #[arg(long)]
    pub no_reference: bool,
    /// Repetitions of each measurement, weft and llama.cpp alike,
    /// alternating; the medians are compared (this machine is noisy).
    #[arg(long, short = 'r', default_value_t = 3)]
    pub reps: usize,
    /// Children joined in the join-cost comparison.
    #[arg(long, default_value_t = 4)]
    pub join_children: usize,
    /// Tokens per child in the join-cost comparison.
    #[arg(long, default_value_t = 256)]
    pub join_child_tokens: usize,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug)]
struct BatchRow {
    threads: usize,
    decode_tok_s: f64,
    reference_tok_s: Option<f64>,
    ratio: Option<f64>,
}

#[derive(Serialize, Debug)]
struct ForkRow {
    context_tokens: usize,
    fork_us: f64,
}

#[derive(Serialize, Debug)]
struct KvRow {
    children: usize,
    prefix_tokens: usize,
    child_tokens: usize,
    bytes_held: usize,
    bytes_if_copied: usize,
}

/// One join, two ways: best of [`JOIN_REPS`] runs each.
#[derive(Serialize, Debug)]
struct JoinRow {
    prefix_tokens: usize,
    children: usize,
    child_tokens: usize,
    /// Tokens the join appends after the children (`<Conclusion>`-like).
    append_tokens: usize,
    kv_merge_join_ms: f64,
    kv_merge_first_step_ms: f64,
    reprefill_join_ms: f64,
    reprefill_first_step_ms: f64,
    /// (re-prefill join + first step) / (KV-merge join + first step).
    ratio: f64,
}

#[derive(Serialize, Debug)]
struct Report {
    model: String,
    threads: usize,
    batched_decode: Vec<BatchRow>,
    fork_latency: Vec<ForkRow>,
    kv_bytes: KvRow,
    join_cost: JoinRow,
}

/// Total decode tokens/s of `b` sequences decoding together through the
/// engine over one `prefix`-token prompt whose KV blocks they share (the
/// prompt is prefilled once, then every sequence picks its full blocks up
/// from the prefix cache and computes only the last partial block), `gen`
/// new tokens each, end of sequence ignored. Timed from the step after
/// every sequence has its first token to the last token: decode only, as
/// `llama-batched-bench` reports S_TG.
fn batched_decode(
    model: &Model,
    tok: &Tokenizer,
    prefix: usize,
    gen: usize,
    b: usize,
) -> anyhow::Result<f64> {
    let bs = 16;
    let blocks = (prefix + b * (gen + 2 * bs)).div_ceil(bs) + b + 8;
    let mib = (blocks * KvCache::bytes_per_block(&model.config, bs)).div_ceil(1 << 20);
    let cfg = EngineConfig {
        block_size: bs,
        kv_budget_mib: mib,
        max_live_threads: b.max(1),
        max_live_threads_per_request: 1,
        prefill_chunk: prefix.max(1),
        max_batch_tokens: prefix.max(b * bs),
        max_tokens_per_thread: gen.max(1),
        ..Default::default()
    };
    let mut engine = Engine::new(model, tok, cfg)?;
    let prompt = super::bench::random_tokens(prefix.max(1), model.config.vocab_size, b as u64);
    let request = |max_tokens: usize| {
        let mut spec = RequestSpec::new(Prompt::Tokens(prompt.clone()));
        spec.max_tokens = Some(max_tokens);
        spec.ignore_eos = true;
        spec
    };
    engine.run(vec![request(1)], &mut |_| {})?;
    for _ in 0..b {
        engine.add(request(gen.max(1)))?;
    }
    let mut started = std::collections::HashSet::new();
    while started.len() < b && engine.has_work() {
        for e in engine.step()? {
            if let Event::Text { request, .. } = e {
                started.insert(request);
            }
        }
    }
    let t0 = Instant::now();
    let mut tokens = 0;
    while engine.has_work() {
        for e in engine.step()? {
            if let Event::Text { token_ids, .. } = e {
                tokens += token_ids.len();
            }
        }
    }
    Ok(tokens as f64 / t0.elapsed().as_secs_f64())
}

fn fork_latency(model: &Model, context: usize) -> anyhow::Result<f64> {
    let bs = 16;
    let n_blocks = context.div_ceil(bs) + 8;
    let mut pool = BlockPool::new(n_blocks, bs)?;
    let _ = model;
    let mut root = BlockTable::new();
    root.grow(&mut pool, context)?;
    let reps = 2000;
    let t0 = Instant::now();
    for _ in 0..reps {
        let mut child = root.fork(&mut pool)?;
        child.free(&mut pool)?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / reps as f64)
}

fn kv_bytes(model: &Model) -> anyhow::Result<KvRow> {
    let (bs, prefix, children, own): (usize, usize, usize, usize) = (16, 2048, 16, 128);
    let n_blocks = (prefix + children * (own + bs)).div_ceil(bs) + 1;
    let mut pool = BlockPool::new(n_blocks, bs)?;
    let mut root = BlockTable::new();
    root.grow(&mut pool, prefix)?;
    let mut kids: Vec<BlockTable> = (0..children)
        .map(|_| root.fork(&mut pool))
        .collect::<Result<_, _>>()?;
    for k in kids.iter_mut() {
        k.grow(&mut pool, own)?;
    }
    let per_block = KvCache::bytes_per_block(&model.config, bs);
    Ok(KvRow {
        children,
        prefix_tokens: prefix,
        child_tokens: own,
        bytes_held: pool.n_used() * per_block,
        bytes_if_copied: (prefix.div_ceil(bs) * (children + 1) + children * own.div_ceil(bs))
            * per_block,
    })
}

const JOIN_REPS: usize = 3;
/// The engine's default prefill chunk: a re-prefill join runs in chunks of it.
const PREFILL_CHUNK: usize = 256;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Joins `children` children of `own` tokens each, forked from a
/// `prefix`-token prompt, then runs the parent's first decode step: once by
/// merging the children's KV (the parent computes only the appended tokens,
/// over the prefix and every child's KV in place), once by re-prefilling the
/// children's tokens after the shared prefix (sequential positions).
fn join_cost(model: &Model, prefix: usize, children: usize, own: usize) -> anyhow::Result<JoinRow> {
    anyhow::ensure!(
        prefix > 0 && children > 0 && own > 0,
        "the join-cost comparison needs a prefix, children and child tokens (got {prefix}, {children}, {own})"
    );
    let bs = 16;
    let append = 4;
    let joined = children * own + append + 1;
    let n_blocks = (prefix + children * (own + bs) + 2 * (joined + bs)).div_ceil(bs) + children + 4;
    let mut kv = KvCache::new(&model.config, bs, n_blocks);
    let mut pool = BlockPool::new(n_blocks, bs)?;
    let mut ws = Workspace::default();
    let vocab = model.config.vocab_size as u32;
    let token = |i: usize| ((i as u32).wrapping_mul(7919).wrapping_add(13)) % vocab;
    let prompt: Vec<u32> = (0..prefix).map(token).collect();
    let mut root = BlockTable::new();
    root.grow(&mut pool, prefix)?;
    for (c, chunk) in prompt.chunks(PREFILL_CHUNK).enumerate() {
        let step = SeqStep {
            tokens: chunk,
            pos_start: c * PREFILL_CHUNK,
            kv_start: c * PREFILL_CHUNK,
            block_table: root.blocks(),
            ..Default::default()
        };
        model.forward(&mut kv, &[step], &mut ws)?;
    }
    // The children, each decoded at positions prefix.. in its own table.
    let kid_tokens: Vec<Vec<u32>> = (0..children)
        .map(|c| (0..own).map(|i| token(prefix + c * own + i + 1)).collect())
        .collect();
    let mut kids = Vec::with_capacity(children);
    for _ in 0..children {
        let mut t = root.fork(&mut pool)?;
        if let Some(op) = t.grow(&mut pool, own)? {
            kv.copy_block(op.src, op.dst, op.n_slots);
        }
        kids.push(t);
    }
    for start in (0..own).step_by(PREFILL_CHUNK) {
        let end = (start + PREFILL_CHUNK).min(own);
        let steps: Vec<SeqStep> = kids
            .iter()
            .zip(&kid_tokens)
            .map(|(t, toks)| SeqStep {
                tokens: &toks[start..end],
                pos_start: prefix + start,
                kv_start: prefix + start,
                block_table: t.blocks(),
                ..Default::default()
            })
            .collect();
        model.forward(&mut kv, &steps, &mut ws)?;
    }
    let appended: Vec<u32> = (0..append).map(|i| token(9 * prefix + i)).collect();

    let (mut merge_join, mut merge_step) = (f64::MAX, f64::MAX);
    let (mut re_join, mut re_step) = (f64::MAX, f64::MAX);
    for _ in 0..JOIN_REPS {
        // KV merge: the parent sees the prefix and every child where it is.
        let t0 = Instant::now();
        let mut shared = vec![KvSpan {
            block_table: root.blocks(),
            start: 0,
            end: prefix,
        }];
        shared.extend(kids.iter().map(|k| KvSpan {
            block_table: k.blocks(),
            start: prefix,
            end: prefix + own,
        }));
        let mut parent = BlockTable::new();
        parent.grow(&mut pool, append + 1)?;
        let pos = prefix + own;
        let logits = model.forward(
            &mut kv,
            &[SeqStep {
                tokens: &appended,
                pos_start: pos,
                block_table: parent.blocks(),
                shared: &shared,
                ..Default::default()
            }],
            &mut ws,
        )?;
        merge_join = merge_join.min(ms(t0));
        let next = argmax(&logits[0]);
        let t0 = Instant::now();
        model.forward(
            &mut kv,
            &[SeqStep {
                tokens: &[next],
                pos_start: pos + append,
                kv_start: append,
                block_table: parent.blocks(),
                shared: &shared,
                ..Default::default()
            }],
            &mut ws,
        )?;
        merge_step = merge_step.min(ms(t0));
        parent.free(&mut pool)?;

        // Re-prefill: the children's tokens and the appended ones after the
        // shared prefix, at sequential positions.
        let t0 = Instant::now();
        let text: Vec<u32> = kid_tokens
            .iter()
            .flatten()
            .chain(&appended)
            .copied()
            .collect();
        let mut parent = root.fork(&mut pool)?;
        if let Some(op) = parent.grow(&mut pool, text.len() + 1)? {
            kv.copy_block(op.src, op.dst, op.n_slots);
        }
        let mut logits = Vec::new();
        for (c, chunk) in text.chunks(PREFILL_CHUNK).enumerate() {
            let at = prefix + c * PREFILL_CHUNK;
            let step = SeqStep {
                tokens: chunk,
                pos_start: at,
                kv_start: at,
                block_table: parent.blocks(),
                ..Default::default()
            };
            logits = model.forward(&mut kv, &[step], &mut ws)?;
        }
        re_join = re_join.min(ms(t0));
        let next = argmax(&logits[0]);
        let at = prefix + text.len();
        let t0 = Instant::now();
        let step = SeqStep {
            tokens: &[next],
            pos_start: at,
            kv_start: at,
            block_table: parent.blocks(),
            ..Default::default()
        };
        model.forward(&mut kv, &[step], &mut ws)?;
        re_step = re_step.min(ms(t0));
        parent.free(&mut pool)?;
    }
    Ok(JoinRow {
        prefix_tokens: prefix,
        children,
        child_tokens: own,
        append_tokens: append,
        kv_merge_join_ms: merge_join,
        kv_merge_first_step_ms: merge_step,
        reprefill_join_ms: re_join,
        reprefill_first_step_ms: re_step,
        ratio: (re_join + re_step) / (merge_join + merge_step),
    })
}

fn default_reference() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/llama-cpp-anchor/build/bin/llama-batched-bench");
    p.exists().then_some(p)
}

/// Runs llama-batched-bench with a shared prompt (`-pps`) and reads the
/// decode speed (S_TG t/s) per batch size from its table.
fn reference(
    bin: &Path,
    model: &Path,
    threads: usize,
    a: &ThreadsArgs,
) -> anyhow::Result<Vec<(usize, f64)>> {
    let npl: Vec<String> = a.batch.iter().map(|b| b.to_string()).collect();
    // llama.cpp splits the context evenly over the sequences: each holds prefix + gen.
    let ctx = a.batch.iter().max().copied().unwrap_or(1) * (a.prefix + a.gen + 16);
    let out = Command::new(bin)
        .args([
            "-m",
            &model.to_string_lossy(),
            "-t",
            &threads.to_string(),
            "-tb",
            &threads.to_string(),
        ])
        .args([
            "-c",
            &ctx.to_string(),
            "-npp",
            &a.prefix.to_string(),
            "-ntg",
            &a.gen.to_string(),
        ])
        .args(["-npl", &npl.join(","), "-pps"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "llama-batched-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with('|')) {
        let cells: Vec<&str> = line
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        if cells.len() >= 8 {
            if let (Ok(b), Ok(tg)) = (cells[2].parse::<usize>(), cells[7].parse::<f64>()) {
                rows.push((b, tg));
            }
        }
    }
    Ok(rows)
}

pub fn run(a: ThreadsArgs) -> anyhow::Result<()> {
    let (model, tok) = a.model.load()?;
    let reference_bin = if a.no_reference {
        None
    } else {
        let bin = a.llama_batched_bench.clone().or_else(default_reference);
        if bin.is_none() {
            eprintln!("[weft] no llama-batched-bench found; reporting weft alone");
        }
        bin
    };
    let mut weft: Vec<Vec<f64>> = vec![Vec::new(); a.batch.len()];
    let mut llama: Vec<Vec<f64>> = vec![Vec::new(); a.batch.len()];
    for rep in 0..a.reps.max(1) {
        for (k, &b) in a.batch.iter().enumerate() {
            let tps = batched_decode(&model, &tok, a.prefix, a.gen, b)?;
            eprintln!("[weft] rep {}: B={b}: {tps:.1} tok/s", rep + 1);
            weft[k].push(tps);
        }
        if let Some(bin) = &reference_bin {
            eprintln!(
                "[weft] rep {}: running reference {}",
                rep + 1,
                bin.display()
            );
            for (b, tg) in reference(bin, &a.model.path(), model.threads(), &a)? {
                if let Some(k) = a.batch.iter().position(|&x| x == b) {
                    llama[k].push(tg);
                }
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    let rows: Vec<BatchRow> = a
        .batch
        .iter()
        .enumerate()
        .map(|(k, &b)| {
            let w = median(&mut weft[k]).unwrap_or(0.0);
            let r = median(&mut llama[k]);
            BatchRow {
                threads: b,
                decode_tok_s: w,
                reference_tok_s: r,
                ratio: r.map(|r| w / r),
            }
        })
        .collect();
    let report = Report {
        model: a.model.path().display().to_string(),
        threads: model.threads(),
        batched_decode: rows,
        fork_latency: [128, 1024, 4096]
            .into_iter()
            .map(|c| {
                Ok(ForkRow {
                    context_tokens: c,
                    fork_us: fork_latency(&model, c)?,
                })
            })
            .collect::<anyhow::Result<_>>()?,
        kv_bytes: kv_bytes(&model)?,
        join_cost: join_cost(&model, a.prefix, a.join_children, a.join_child_tokens)?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "batched decode through the engine, {} shared prefix tokens, {} new tokens per sequence (median of {}):",
        a.prefix,
        a.gen,
        a.reps.max(1)
    );
    for r in &report.batched_decode {
        match (r.reference_tok_s, r.ratio) {
            (Some(x), Some(q)) => println!(
                "  B={:<3} weft {:>7.1} tok/s   llama.cpp {:>7.1} tok/s   {:.2}x",
                r.threads, r.decode_tok_s, x, q
            ),
            _ => println!("  B={:<3} weft {:>7.1} tok/s", r.threads, r.decode_tok_s),
        }
    }
    println!("fork latency (block-table copy):");
    for f in &report.fork_latency {
        println!(
            "  context {:>5} tokens: {:>7.2} us",
            f.context_tokens, f.fork_us
        );
    }
    let k = &report.kv_bytes;
    println!(
        "KV held by {} children of a {}-token prefix ({} own tokens each): {:.1} MiB (copying the prefix would hold {:.1} MiB)",
        k.children,
        k.prefix_tokens,
        k.child_tokens,
        k.bytes_held as f64 / 1048576.0,
        k.bytes_if_copied as f64 / 1048576.0
    );
    let j = &report.join_cost;
    println!(
        "join cost, {} children of {} tokens after a {}-token prefix, {} appended tokens (join + first parent step):",
        j.children, j.child_tokens, j.prefix_tokens, j.append_tokens
    );
    println!(
        "  KV-merge   {:>8.1} ms + {:>6.1} ms",
        j.kv_merge_join_ms, j.kv_merge_first_step_ms
    );
    println!(
        "  re-prefill {:>8.1} ms + {:>6.1} ms   re-prefill / KV-merge {:.1}x",
        j.reprefill_join_ms, j.reprefill_first_step_ms, j.ratio
    );
    Ok(())
}
