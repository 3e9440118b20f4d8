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
    /// Prompt processing and batch-1 decode speed (like `llama-bench -p 512
    /// -n 128`), side by side with llama-bench, and peak RSS against the
    /// model file plus the KV cache the run allocated.
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
    /// Repetitions; the median is reported (the mean of the middle two for
    /// an even count).
    #[arg(long, short = 'r', default_value_t = 3)]
    pub reps: usize,
    /// Prompt tokens per forward pass (the engine's `prefill_chunk`, as
    /// `weft serve` and `weft run` use it by default; llama-bench's
    /// counterpart is its ubatch of 512). The prompt is prefilled in
    /// chunks of this size.
    #[arg(long, default_value_t = weft_engine::EngineConfig::default().prefill_chunk)]
    pub prefill_chunk: usize,
    /// Also run this `llama-bench` binary on the same model, with the same
    /// thread count and shape, and print weft/llama.cpp ratios. Default:
    /// `~/.cache/llama-cpp-anchor/build/bin/llama-bench` (what
    /// `../shared/tools/llama-cpp-anchor.sh` builds), when present.
    #[arg(long)]
    pub llama_bench: Option<PathBuf>,
    /// Skip the llama.cpp reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure each of these GGUF files in turn (each in a fresh process,
    /// so every peak RSS is its own) and print one table of weft against
    /// llama-bench, with this CPU's SIMD flags. `scripts/bench-files.sh`
    /// makes Q4_0, Q4_1, Q8_0, Q4_K_M, Q5_K_M and Q6_K files from one source
    /// into `~/.cache/weft/bench-files`. Every file is checked to exist
    /// before the first is measured. Replaces --model.
    #[arg(long, num_args = 1.., value_name = "GGUF", conflicts_with = "model")]
    pub models: Vec<PathBuf>,
}

#[derive(Serialize, serde::Deserialize, Debug, Default)]
struct DecodeReport {
    model: String,
    weights: String,
    /// The kernel path (`WEFT_ISA`).
    isa: String,
    threads: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    /// Repetitions of each test (medians reported).
    #[serde(default)]
    reps: usize,
    /// Prompt tokens per forward pass.
    #[serde(default)]
    prefill_chunk: usize,
    prompt_tok_s: f64,
    decode_tok_s: f64,
    peak_rss_mib: f64,
    /// Size of the model file(s).
    file_mib: f64,
    /// The KV cache the engine allocated for the run: the longer test's
    /// tokens plus 64, in whole blocks.
    kv_mib: f64,
    /// `peak_rss_mib / (file_mib + kv_mib)`.
    rss_ratio: f64,
    reference: Option<Reference>,
}

#[derive(Serialize, serde::Deserialize, Debug)]
struct Reference {
    engine: String,
    prompt_tok_s: f64,
    decode_tok_s: f64,
    prompt_ratio: f64,
    decode_ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n > 0 && n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
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

/// Size of a model file, or of every file in a model folder, in MiB.
fn file_mib(path: &Path) -> f64 {
    let bytes: u64 = if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map_or(0, |m| m.len())
    };
    bytes as f64 / (1u64 << 20) as f64
}

/// The CPU's model name and the SIMD flags the kernels care about, from
/// /proc/cpuinfo (Linux).
pub fn cpu_summary() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let wanted = [
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
    ];
    let have: Vec<&str> = wanted
        .into_iter()
        .filter(|w| flags.split_whitespace().any(|f| f == *w))
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{} ({} cores; {})",
        field("model name"),
        cores,
        if have.is_empty() {
            "no x86 SIMD flags".to_string()
        } else {
            have.join(" ")
        }
    )
}

/// `--models`: one child process per file (`weft bench decode --json`), then
/// one table.
fn decode_files(a: &DecodeArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the weft binary")?;
    let mut reports = Vec::new();
    let bar = indicatif::ProgressBar::new(a.models.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .expect("static template"),
    );
    for m in &a.models {
        anyhow::ensure!(m.is_file(), "{}: no such file", m.display());
    }
    for m in &a.models {
        bar.set_message(
            m.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string(),
        );
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "decode", "--json", "-m"])
            .arg(m)
            .args(["--prompt-tokens", &a.prompt_tokens.to_string()])
            .args(["--gen-tokens", &a.gen_tokens.to_string()])
            .args(["-r", &a.reps.to_string()])
            .args(["--prefill-chunk", &a.prefill_chunk.to_string()]);
        if let Some(t) = a.model.threads {
            cmd.args(["-t", &t.to_string()]);
        }
        if let Some(b) = &a.llama_bench {
            cmd.arg("--llama-bench").arg(b);
        }
        if a.no_reference {
            cmd.arg("--no-reference");
        }
        let out = cmd
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "weft bench decode failed on {}",
            m.display()
        );
        let r: DecodeReport = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("reading the report for {}", m.display()))?;
        reports.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("CPU: {}", cpu_summary());
    if let Some(r) = reports.first() {
        let with_ref = reports.iter().any(|r| r.reference.is_some());
        println!(
            "weft kernels: {}, {}; pp{} and tg{}; {}{}",
            r.isa,
            super::threads::plural(r.threads, "thread"),
            r.prompt_tokens,
            r.gen_tokens,
            if a.reps == 1 {
                "one repetition".to_string()
            } else {
                format!("medians of {} repetitions", a.reps)
            },
            if with_ref {
                ", weft and llama-bench alternating"
            } else {
                ""
            }
        );
    }
    println!(
        "| file | weft weights | pp weft | pp llama.cpp | pp ratio | tg weft | tg llama.cpp | tg ratio | peak RSS / (file + KV) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &reports {
        let name = Path::new(&r.model)
            .file_name()
            .map_or(r.model.clone(), |n| n.to_string_lossy().to_string());
        let (rpp, rpr, rtg, rtr) = match &r.reference {
            Some(x) => (
                format!("{:.1}", x.prompt_tok_s),
                format!("**{:.2}x**", x.prompt_ratio),
                format!("{:.1}", x.decode_tok_s),
                format!("**{:.2}x**", x.decode_ratio),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {name} | {} | {:.1} | {rpp} | {rpr} | {:.1} | {rtg} | {rtr} | {:.0} / ({:.0} + {:.0}) MiB = {:.3}x |",
            r.weights, r.prompt_tok_s, r.decode_tok_s, r.peak_rss_mib, r.file_mib, r.kv_mib, r.rss_ratio
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs llama-bench and reads its pp / tg averages from the JSON output.
fn run_llama_bench(
    bin: &Path,
    model: &Path,
    threads: usize,
    a: &DecodeArgs,
    reps: usize,
) -> anyhow::Result<(f64, f64)> {
    let out = Command::new(bin)
        .args(["-m", &model.to_string_lossy(), "-t", &threads.to_string()])
        .args([
            "-p",
            &a.prompt_tokens.to_string(),
            "-n",
            &a.gen_tokens.to_string(),
        ])
        .args(["-r", &reps.to_string(), "-o", "json"])
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
    if !a.models.is_empty() {
        return decode_files(&a);
    }
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
    // context too). The KV cache holds what the longer request needs, plus
    // a margin: it is resident memory, and counts in the RSS ratio.
    let block_bytes = weft_model::KvCache::bytes_per_block(&model.config, 16);
    let kv_tokens = a.prompt_tokens.max(a.gen_tokens) + 64;
    let kv_budget_mib = (kv_tokens.div_ceil(16) * block_bytes).div_ceil(1 << 20) + 1;
    anyhow::ensure!(a.prefill_chunk >= 1, "--prefill-chunk must be at least 1");
    let chunk = a.prefill_chunk.min(a.prompt_tokens);
    let cfg = EngineConfig {
        prefill_chunk: chunk,
        max_batch_tokens: chunk,
        kv_budget_mib,
        max_tokens_per_thread: a.gen_tokens.max(1),
        ..Default::default()
    };
    let kv_mib = ((kv_budget_mib << 20) / block_bytes * block_bytes) as f64 / (1u64 << 20) as f64;
    let mut engine = Engine::new(&model, &tok, cfg)?;
    // Warm-up: touch every weight once.
    timed_request(&mut engine, random_tokens(8, vocab, 0), 2)?;
    let reference = if a.no_reference {
        None
    } else {
        let bin = a.llama_bench.clone().or_else(default_llama_bench);
        if bin.is_none() {
            eprintln!("[weft] no llama-bench found (build it with shared/tools/llama-cpp-anchor.sh or pass --llama-bench); reporting weft alone");
        }
        bin
    };
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    let (mut rpp, mut rtg) = (Vec::new(), Vec::new());
    // weft and llama-bench alternate, one repetition each, so a change in
    // this machine's load hits both sides alike; medians are compared.
    for rep in 0..a.reps.max(1) {
        let salt = 1 + 2 * rep as u64;
        // The prompt's time is the time to its first token: the prefill
        // plus one sampling step.
        let (ttft, _) = timed_request(&mut engine, random_tokens(a.prompt_tokens, vocab, salt), 1)?;
        pp.push(a.prompt_tokens as f64 / ttft);
        let (ttft, rest) =
            timed_request(&mut engine, random_tokens(1, vocab, salt + 1), a.gen_tokens)?;
        tg.push(a.gen_tokens as f64 / (ttft + rest));
        if let Some(bin) = &reference {
            eprintln!(
                "[weft] {}: rep {}/{}: running reference {}",
                a.model
                    .path()
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy(),
                rep + 1,
                a.reps,
                bin.display()
            );
            let (p, t) = run_llama_bench(bin, &a.model.path(), model.threads(), &a, 1)?;
            rpp.push(p);
            rtg.push(t);
        }
    }
    let file_mib = file_mib(&a.model.path());
    let peak = peak_rss_mib();
    let mut report = DecodeReport {
        model: a.model.path().display().to_string(),
        weights: model.weight_kind.clone(),
        isa: weft_model::kernels::Isa::detect().name().to_string(),
        threads: model.threads(),
        file_mib,
        kv_mib,
        rss_ratio: peak / (file_mib + kv_mib),
        prompt_tokens: a.prompt_tokens,
        reps: a.reps,
        prefill_chunk: chunk,
        gen_tokens: a.gen_tokens,
        prompt_tok_s: median(pp),
        decode_tok_s: median(tg),
        peak_rss_mib: peak,
        reference: None,
    };
    drop(engine);
    if !rpp.is_empty() {
        let (rpp, rtg) = (median(rpp), median(rtg));
        report.reference = Some(Reference {
            engine: "llama.cpp (llama-bench)".into(),
            prompt_tok_s: rpp,
            decode_tok_s: rtg,
            prompt_ratio: report.prompt_tok_s / rpp,
            decode_ratio: report.decode_tok_s / rtg,
        });
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
        println!(
            "peak RSS     {:>8.1} MiB  ({:.3}x the file's {:.1} MiB + the KV cache's {:.1} MiB)",
            report.peak_rss_mib, report.rss_ratio, report.file_mib, report.kv_mib
        );
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
