//! `weft bench train`: training tokens/s of weft-train against PyTorch on
//! the same model shape, rows and optimizer, measured in the same run.

use anyhow::Context;
use std::path::PathBuf;
use std::process::Command;
use weft_train::ModelShape;

#[derive(clap::Args, Debug)]
pub struct TrainBenchArgs {
    /// Model shape JSON (as for `weft train`); default: the Countdown
    /// models' shape (d=128, 4 layers, 4 heads, FFN 384, vocab 1120).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Packed rows per step (the batch).
    #[arg(long, default_value_t = 4)]
    rows: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 1024)]
    seq_len: usize,
    /// Timed steps (after 2 untimed ones).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Threads for both (weft's rayon pool, torch.set_num_threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Python with torch (default: $WEFT_TORCH_PYTHON, else
    /// ~/.cache/weft/torch-venv/bin/python). Set up with
    /// `python3 -m venv ~/.cache/weft/torch-venv && ~/.cache/weft/torch-venv/bin/pip install torch`.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Time weft only (no PyTorch run, no ratio).
    #[arg(long)]
    no_reference: bool,
    /// Rounds of weft then PyTorch, one after the other; the ratio printed
    /// is the median of the rounds' ratios. On a shared VM a core's speed
    /// drifts by 10% or more within a minute, and alternating keeps the two
    /// measured under the same drift.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,
}

pub fn run(a: TrainBenchArgs) -> anyhow::Result<()> {
    let mut shape: ModelShape = match &a.config {
        Some(p) => ModelShape::load(p)?,
        None => serde_json::from_str(
            r#"{"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 4096}"#,
        )?,
    };
    if shape.vocab_size == 0 {
        shape.vocab_size = 1120;
    }
    anyhow::ensure!(
        shape.kv_heads() == shape.num_attention_heads,
        "the PyTorch reference models MHA only (no GQA)"
    );
    anyhow::ensure!(
        a.seq_len <= shape.max_position_embeddings,
        "seq_len exceeds max_position_embeddings"
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build()?;
    eprintln!(
        "[weft] {} params, {} rows x {} tokens, {} timed steps, {}",
        shape.parameters(),
        a.rows,
        a.seq_len,
        a.steps,
        super::threads::plural(a.threads, "thread")
    );
    let measure_weft = || -> anyhow::Result<f64> {
        let tps = pool.install(|| {
            weft_train::bench::steps_per_second(&shape, a.rows, a.seq_len, a.steps, 2)
        })?;
        eprintln!("[weft] {tps:.0} tok/s");
        Ok(tps)
    };
    println!(
        "training step (forward + backward + AdamW), {} rows x {} tokens:",
        a.rows, a.seq_len
    );
    if a.no_reference {
        let mut all = Vec::new();
        for _ in 0..a.rounds {
            all.push(measure_weft()?);
        }
        println!("  weft     {:>8.0} tok/s", median(&mut all));
        return Ok(());
    }
    let python = a
        .python
        .clone()
        .or_else(|| std::env::var_os("WEFT_TORCH_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/weft/torch-venv/bin/python")
        });
    let script = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../benches/train_torch.py"
    ));
    let mut rounds = Vec::new();
    for round in 1..=a.rounds {
        let weft = measure_weft()?;
        let (torch, version) = reference(&a, &shape, &python, &script)?;
        println!(
            "  round {round}: weft {weft:>6.0} tok/s, PyTorch {torch:>6.0} tok/s, ratio {:.2}x",
            weft / torch
        );
        rounds.push((weft, torch, version));
    }
    let version = rounds[0].2.clone();
    let mut weft: Vec<f64> = rounds.iter().map(|r| r.0).collect();
    let mut torch: Vec<f64> = rounds.iter().map(|r| r.1).collect();
    let mut ratios: Vec<f64> = rounds.iter().map(|r| r.0 / r.1).collect();
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    println!(
        "  weft     {:>8.0} tok/s   (median of {})",
        median(&mut weft),
        a.rounds
    );
    println!(
        "  PyTorch  {:>8.0} tok/s   (torch {version})",
        median(&mut torch)
    );
    println!(
        "  ratio    {:.2}x (weft / PyTorch, median of the rounds' ratios; {lo:.2}x to {hi:.2}x)",
        median(&mut ratios)
    );
    Ok(())
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One run of `benches/train_torch.py` on the same shape, rows, steps and
/// threads: (tokens/s, torch's version).
fn reference(
    a: &TrainBenchArgs,
    shape: &ModelShape,
    python: &std::path::Path,
    script: &std::path::Path,
) -> anyhow::Result<(f64, String)> {
    let spec = serde_json::json!({
        "hidden_size": shape.hidden_size, "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers, "num_attention_heads": shape.num_attention_heads,
        "vocab_size": shape.vocab_size, "seq_len": a.seq_len, "batch_rows": a.rows,
        "steps": a.steps, "warmup": 2, "threads": a.threads,
    });
    let spec_path =
        std::env::temp_dir().join(format!("weft-bench-train-{}.json", std::process::id()));
    std::fs::write(&spec_path, spec.to_string())?;
    eprintln!(
        "[weft] running reference: {} {}",
        python.display(),
        script.display()
    );
    let out = Command::new(python)
        .arg(script)
        .arg(&spec_path)
        .output()
        .with_context(|| {
            format!(
                "running {} (pass --python or --no-reference)",
                python.display()
            )
        })?;
    let _ = std::fs::remove_file(&spec_path);
    anyhow::ensure!(
        out.status.success(),
        "the PyTorch reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("unexpected reference output: {line}"))?;
    let torch = v["tokens_per_s"]
        .as_f64()
        .context("reference printed no tokens_per_s")?;
    Ok((torch, v["torch"].as_str().unwrap_or("?").to_string()))
}
