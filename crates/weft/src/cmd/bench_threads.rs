//! `weft bench threads`: B threads forked from one shared prefix, decoded
//! together, against `llama-batched-bench -pps` with the same shape in the
//! same run; plus fork latency and KV bytes held.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use weft_kv::{BlockPool, BlockTable};
use weft_model::sampling::argmax;
use weft_model::{KvCache, Model, SeqStep, Workspace};

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
    #[arg(long)]
    pub no_reference: bool,
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

#[derive(Serialize, Debug)]
struct Report {
    model: String,
    threads: usize,
    batched_decode: Vec<BatchRow>,
    fork_latency: Vec<ForkRow>,
    kv_bytes: KvRow,
}

/// Total decode tokens/s of `b` threads forked from a `prefix`-token prompt.
fn batched_decode(model: &Model, prefix: usize, gen: usize, b: usize) -> anyhow::Result<f64> {
    let bs = 16;
    let n_blocks = (prefix + b * (gen + bs)).div_ceil(bs) + b + 1;
    let mut kv = KvCache::new(&model.config, bs, n_blocks);
    let mut pool = BlockPool::new(n_blocks, bs)?;
    let mut ws = Workspace::default();
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..prefix as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let mut root = BlockTable::new();
    root.grow(&mut pool, prefix)?;
    let step = SeqStep {
        tokens: &prompt,
        pos_start: 0,
        kv_start: 0,
        block_table: root.blocks(),
        all_logits: false,
        shared: &[],
    };
    let first = argmax(&model.forward(&mut kv, &[step], &mut ws)?[0]);
    let mut tables: Vec<BlockTable> = (0..b)
        .map(|_| root.fork(&mut pool))
        .collect::<Result<_, _>>()?;
    let mut next = vec![first; b];
    let t0 = Instant::now();
    for s in 0..gen {
        for t in tables.iter_mut() {
            if let Some(op) = t.grow(&mut pool, 1)? {
                kv.copy_block(op.src, op.dst, op.n_slots);
            }
        }
        let steps: Vec<SeqStep> = (0..b)
            .map(|i| SeqStep {
                tokens: std::slice::from_ref(&next[i]),
                pos_start: prefix + s,
                kv_start: prefix + s,
                block_table: tables[i].blocks(),
                all_logits: false,
                shared: &[],
            })
            .collect();
        let logits = model.forward(&mut kv, &steps, &mut ws)?;
        // Threads diverge as they would with sampling: thread i takes its
        // (i+1)-th best... here simply the argmax shifted by i, so no two
        // threads decode the same tokens.
        for (i, l) in logits.iter().enumerate() {
            next[i] = (argmax(l) + i as u32) % vocab;
        }
    }
    Ok((b * gen) as f64 / t0.elapsed().as_secs_f64())
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
    let (model, _tok) = a.model.load()?;
    let mut rows = Vec::new();
    for &b in &a.batch {
        let tps = batched_decode(&model, a.prefix, a.gen, b)?;
        eprintln!("[weft] B={b}: {tps:.1} tok/s");
        rows.push(BatchRow {
            threads: b,
            decode_tok_s: tps,
            reference_tok_s: None,
            ratio: None,
        });
    }
    if !a.no_reference {
        match a.llama_batched_bench.clone().or_else(default_reference) {
            Some(bin) => {
                eprintln!("[weft] running reference: {}", bin.display());
                for (b, tg) in reference(&bin, &a.model.path(), model.threads(), &a)? {
                    if let Some(r) = rows.iter_mut().find(|r| r.threads == b) {
                        r.reference_tok_s = Some(tg);
                        r.ratio = Some(r.decode_tok_s / tg);
                    }
                }
            }
            None => eprintln!("[weft] no llama-batched-bench found; reporting weft alone"),
        }
    }
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
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "batched decode, {} shared prefix tokens, {} new tokens per thread:",
        a.prefix, a.gen
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
    println!("join cost (KV-merge vs re-prefill): not measured; KV-merge joins currently run as re-prefill");
    Ok(())
}
