//! `weft bench`: speed measurements, printed as ratios against a reference
//! measured in the same run.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use weft_engine::{Engine, EngineConfig, Event, Prompt, RequestSpec};

use super::model_args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchWhat {
    /// Prompt processing and batch-1 decode speed (like `llama-bench -p 512 -n 128`).
    Decode(DecodeArgs),
    /// B threads forked from a shared prefix, decoded in one batch (like
    /// `llama-batched-bench -pps`), fork latency and KV bytes.
    Threads(super::bench_threads::ThreadsArgs),
    /// Training tokens/s of `weft train` against PyTorch on the same model
    /// shape and batch (random tokens).
    Train(super::bench_train::TrainBenchArgs),
    /// `weft serve` against `llama-server -np N` on one streamed request
    /// mix: throughput, TTFT and inter-token latency at each concurrency.
    Serve(super::bench_serve::ServeBenchArgs),
}

#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length for the prompt-processing test.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens for the decode test.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Repetitions; the median is reported.
    #[arg(long, short = 'r', default_value_t = 3)]
    pub reps: usize,
    /// Also run this `llama-bench` binary on the same model, with the same
    /// thread count and shape, and print weft/llama.cpp ratios. Default: the
    /// one `shared/tools/llama-cpp-anchor.sh` builds, when present.
    #[arg(long)]
    pub llama_bench: Option<PathBuf>,
    /// Skip the llama.cpp reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug, Default)]
struct DecodeReport {
    model: String,
    weights: String,
    threads: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    prompt_tok_s: f64,
    decode_tok_s: f64,
    peak_rss_mib: f64,
    reference: Option<Reference>,
}

#[derive(Serialize, Debug)]
struct Reference {
    engine: String,
    prompt_tok_s: f64,
    decode_tok_s: f64,
    prompt_ratio: f64,
    decode_ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak resident memory of this process, from /proc (Linux).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn default_llama_bench() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/llama-cpp-anchor/build/bin/llama-bench");
    p.exists().then_some(p)
}

/// Runs llama-bench and reads its pp / tg averages from the JSON output.
fn run_llama_bench(
    bin: &Path,
    model: &Path,
    threads: usize,
    a: &DecodeArgs,
) -> anyhow::Result<(f64, f64)> {
    let out = Command::new(bin)
        .args(["-m", &model.to_string_lossy(), "-t", &threads.to_string()])
        .args([
            "-p",
            &a.prompt_tokens.to_string(),
            "-n",
            &a.gen_tokens.to_string(),
        ])
        .args(["-r", &a.reps.to_string(), "-o", "json"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "llama-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing llama-bench JSON")?;
    let mut pp = 0.0;
    let mut tg = 0.0;
    for r in rows.as_array().context("llama-bench JSON is not a list")? {
        let ts = r["avg_ts"].as_f64().unwrap_or(0.0);
        if r["n_prompt"].as_u64().unwrap_or(0) > 0 {
            pp = ts;
        } else {
            tg = ts;
        }
    }
    Ok((pp, tg))
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchWhat::Decode(a) => decode(a),
        BenchWhat::Threads(a) => super::bench_threads::run(a).map(|()| ExitCode::SUCCESS),
        BenchWhat::Train(a) => super::bench_train::run(a).map(|()| ExitCode::SUCCESS),
        BenchWhat::Serve(a) => super::bench_serve::run(a).map(|()| ExitCode::SUCCESS),
    }
}

/// Deterministic pseudo-random token ids (llama-bench also uses random ids);
/// each `salt` gives another sequence, so repetitions never hit the
/// engine's prefix cache.
pub fn random_tokens(n: usize, vocab: usize, salt: u64) -> Vec<u32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab as u64) as u32
        })
        .collect()
}

/// Runs one request of `prompt` through `engine`, decoding exactly
/// `max_tokens` (end of sequence ignored). Returns (seconds to the first
/// token, seconds from the first token to the last).
fn timed_request(
    engine: &mut Engine,
    prompt: Vec<u32>,
    max_tokens: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut spec = RequestSpec::new(Prompt::Tokens(prompt));
    spec.max_tokens = Some(max_tokens);
    spec.ignore_eos = true;
    let t0 = Instant::now();
    engine.add(spec)?;
    let mut first = None;
    while engine.has_work() {
        for e in engine.step()? {
            if let Event::Text { thread: 0, .. } = e {
                first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            }
        }
    }
    let ttft = first.context("the request generated nothing")?;
    Ok((ttft, t0.elapsed().as_secs_f64() - ttft))
}

fn decode(a: DecodeArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.prompt_tokens >= 1, "--prompt-tokens must be at least 1");
    anyhow::ensure!(a.gen_tokens >= 1, "--gen-tokens must be at least 1");
    anyhow::ensure!(a.reps >= 1, "--reps must be at least 1");
    let (model, tok) = a.model.load()?;
    let context = model.config.max_context;
    anyhow::ensure!(
        a.prompt_tokens < context && a.gen_tokens < context,
        "--prompt-tokens ({}) and --gen-tokens ({}) must each be under the model's context of {context} tokens",
        a.prompt_tokens,
        a.gen_tokens
    );
    let vocab = model.config.vocab_size;
    // The whole run goes through the engine, as every request does: pp is a
    // request of `prompt_tokens` prefilled in one chunk, tg one of a single
    // token decoding `gen_tokens` (llama-bench's tg starts from an empty
    // context too).
    let cfg = EngineConfig {
        prefill_chunk: a.prompt_tokens.max(1),
        max_batch_tokens: a.prompt_tokens.max(1),
        kv_budget_mib: 64.max(
            (a.prompt_tokens + a.gen_tokens + 64)
                * weft_model::KvCache::bytes_per_block(&model.config, 16)
                / 16
                / (1 << 20)
                + 8,
        ),
        max_tokens_per_thread: a.gen_tokens.max(1),
        ..Default::default()
    };
    let mut engine = Engine::new(&model, &tok, cfg)?;
    // Warm-up: touch every weight once.
    timed_request(&mut engine, random_tokens(8, vocab, 0), 2)?;
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for rep in 0..a.reps.max(1) {
        let salt = 1 + 2 * rep as u64;
        // The prompt's time is the time to its first token: the prefill
        // plus one sampling step.
        let (ttft, _) = timed_request(&mut engine, random_tokens(a.prompt_tokens, vocab, salt), 1)?;
        pp.push(a.prompt_tokens as f64 / ttft);
        let (ttft, rest) =
            timed_request(&mut engine, random_tokens(1, vocab, salt + 1), a.gen_tokens)?;
        tg.push(a.gen_tokens as f64 / (ttft + rest));
    }
    let mut report = DecodeReport {
        model: a.model.path().display().to_string(),
        weights: model.weight_kind.clone(),
        threads: model.threads(),
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        prompt_tok_s: median(pp),
        decode_tok_s: median(tg),
        peak_rss_mib: peak_rss_mib(),
        reference: None,
    };
    drop(engine);
    if !a.no_reference {
        if let Some(bin) = a.llama_bench.clone().or_else(default_llama_bench) {
            eprintln!("[weft] running reference: {}", bin.display());
            let (rpp, rtg) = run_llama_bench(&bin, &a.model.path(), model.threads(), &a)?;
            report.reference = Some(Reference {
                engine: "llama.cpp (llama-bench)".into(),
                prompt_tok_s: rpp,
                decode_tok_s: rtg,
                prompt_ratio: report.prompt_tok_s / rpp,
                decode_ratio: report.decode_tok_s / rtg,
            });
        } else {
            eprintln!("[weft] no llama-bench found (build it with shared/tools/llama-cpp-anchor.sh or pass --llama-bench); reporting weft alone");
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "model        {} ({}, {})",
            report.model,
            report.weights,
            super::threads::plural(report.threads, "thread")
        );
        println!(
            "prompt       {:>8.1} tok/s  (pp{})",
            report.prompt_tok_s, report.prompt_tokens
        );
        println!(
            "decode       {:>8.1} tok/s  (tg{})",
            report.decode_tok_s, report.gen_tokens
        );
        println!("peak RSS     {:>8.1} MiB", report.peak_rss_mib);
        if let Some(r) = &report.reference {
            println!(
                "{}: prompt {:.1} tok/s, decode {:.1} tok/s",
                r.engine, r.prompt_tok_s, r.decode_tok_s
            );
            println!(
                "ratio        prompt {:.2}x, decode {:.2}x (weft / llama.cpp)",
                r.prompt_ratio, r.decode_ratio
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
