//! `weft bench serve`: one request mix, sent by one client, to `weft serve`
//! and to `llama-server -np N` (the anchor build), both on the same model,
//! in the same run, at each concurrency. Reports output throughput and the
//! p50/p99 time to first token and inter-token latency, and the ratio of
//! weft's throughput to llama-server's.
//!
//! Both servers run as child processes on 127.0.0.1 with the same thread
//! count; the client (this process) streams every request
//! (`/v1/completions`, greedy, `ignore_eos`, a fixed `max_tokens`) and
//! timestamps each chunk that carries text. Prompts are distinct from their
//! first token so neither server's prefix cache helps; llama-server gets
//! `-np` = the concurrency and a context of `-np` × (prompt + new tokens +
//! slack), weft its defaults. Throughput = completion tokens (from each
//! stream's usage chunk) ÷ the wall time from the first request sent to the
//! last one done. Repetitions alternate the two servers; medians are
//! compared (this machine is noisy).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};

use super::model_args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct ServeBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Clients sending at once, comma-separated; each level runs on a fresh
    /// llama-server with `-np` set to it.
    #[arg(long, default_value = "1,4,16", value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Requests per level (default: 4 × the concurrency, at least 8).
    #[arg(long)]
    pub requests: Option<usize>,
    /// New tokens per request (`max_tokens`, with `ignore_eos`).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// The `llama-server` to compare with (default: the one
    /// `shared/tools/llama-cpp-anchor.sh` builds, when present).
    #[arg(long)]
    pub llama_server: Option<PathBuf>,
    /// Measure weft alone.
    #[arg(long)]
    pub no_reference: bool,
    /// Repetitions of each level, the servers alternating; medians are
    /// compared.
    #[arg(long, short = 'r', default_value_t = 1)]
    pub reps: usize,
    /// Seconds to wait for a server to become ready.
    #[arg(long, default_value_t = 120)]
    pub startup_timeout: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One server at one concurrency (medians over repetitions).
#[derive(Serialize, Debug, Clone)]
struct Row {
    server: &'static str,
    concurrency: usize,
    requests: usize,
    /// Completion tokens per second, all requests together.
    output_tok_s: f64,
    requests_per_s: f64,
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
    itl_p50_ms: f64,
    itl_p99_ms: f64,
}

#[derive(Serialize, Debug)]
struct Report {
    model: String,
    threads: usize,
    max_tokens: usize,
    prompt_tokens_approx: usize,
    rows: Vec<Row>,
    /// weft's output throughput ÷ llama-server's, per concurrency.
    throughput_ratio: Vec<(usize, f64)>,
}

/// One finished streamed request, as the client saw it.
struct Sample {
    ttft: f64,
    /// Gaps between consecutive text chunks (seconds).
    gaps: Vec<f64>,
    tokens: usize,
}

/// A server child process, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn default_llama_server() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/llama-cpp-anchor/build/bin/llama-server");
    p.exists().then_some(p)
}

/// The prompt of request `i`: distinct from its first token.
fn prompt(i: usize) -> String {
    const TOPICS: [&str; 8] = [
        "a lighthouse keeper",
        "a lost robot",
        "two rival bakers",
        "a river that runs uphill",
        "the last library on the moon",
        "a cat who learns to code",
        "a storm over the desert",
        "an old map found in a wall",
    ];
    format!(
        "{i}. Write a long, detailed story about {} and {}. Describe the places, the \
         people and what they say to each other, and end with a surprise. Keep going \
         for several paragraphs.\n\nStory:",
        TOPICS[i % TOPICS.len()],
        TOPICS[(i / TOPICS.len() + 3) % TOPICS.len()]
    )
}

async fn wait_ready(server: &mut Server, timeout: Duration, what: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("{what} exited during start-up ({status})");
        }
        if let Ok(r) = client.get(format!("{}/health", server.base)).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if start.elapsed() > timeout {
            bail!("{what} was not ready after {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_weft(model: &Path, threads: usize) -> anyhow::Result<Server> {
    let port = free_port()?;
    let exe = std::env::current_exe().context("finding the weft binary")?;
    let child = Command::new(exe)
        .args(["serve", "--model"])
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--served-model-name", "bench", "-t", &threads.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting weft serve")?;
    Ok(Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    })
}

fn start_llama(
    bin: &Path,
    model: &Path,
    threads: usize,
    slots: usize,
    per_slot: usize,
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let t = threads.to_string();
    let child = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["-t", &t, "-tb", &t, "-np", &slots.to_string()])
        .args(["-c", &(slots * per_slot).to_string()])
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--no-webui",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    })
}

/// Streams one completion; the text chunks' times and the usage.
async fn one(
    client: &reqwest::Client,
    base: &str,
    prompt: &str,
    max_tokens: usize,
) -> anyhow::Result<Sample> {
    let body = json!({
        "model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true},
    });
    let sent = Instant::now();
    let resp = client
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    if !status.is_success() {
        bail!("HTTP {status}: {}", resp.text().await.unwrap_or_default());
    }
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut times = Vec::new();
    let mut usage = None;
    let mut chunks = 0;
    'read: while let Some(bytes) = stream.next().await {
        buf.extend_from_slice(&bytes?);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                break 'read;
            }
            let v: Value =
                serde_json::from_str(data).with_context(|| format!("a chunk: {data}"))?;
            if let Some(e) = v.get("error") {
                bail!("error in the stream: {e}");
            }
            let text = v["choices"][0]["text"].as_str().unwrap_or("");
            if !text.is_empty() {
                times.push(sent.elapsed().as_secs_f64());
                chunks += 1;
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                usage = Some(n as usize);
            }
        }
    }
    let Some(&ttft) = times.first() else {
        bail!("the stream carried no text");
    };
    Ok(Sample {
        ttft,
        gaps: times.windows(2).map(|w| w[1] - w[0]).collect(),
        tokens: usage.unwrap_or(chunks),
    })
}

/// `requests` requests through `concurrency` clients; one row.
async fn level(
    server: &'static str,
    base: &str,
    concurrency: usize,
    requests: usize,
    max_tokens: usize,
    first: usize,
) -> anyhow::Result<Row> {
    // A fresh connection per request, for both servers: llama-server's
    // HTTP library closes a kept-alive connection after a few requests, and
    // a request racing that close fails.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    // Warm-up: each client's connection and the server's first batch.
    let warm: Vec<_> = (0..concurrency)
        .map(|c| {
            let (client, base) = (client.clone(), base.to_string());
            tokio::spawn(async move { one(&client, &base, &prompt(1_000_000 + c), 4).await })
        })
        .collect();
    for w in warm {
        w.await??;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, next) = (client.clone(), base.to_string(), next.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= requests {
                        return Ok::<_, anyhow::Error>(out);
                    }
                    out.push(one(&client, &base, &prompt(first + i), max_tokens).await?);
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await??);
    }
    let wall = start.elapsed().as_secs_f64();
    let tokens: usize = samples.iter().map(|s| s.tokens).sum();
    let short = samples.iter().filter(|s| s.tokens != max_tokens).count();
    if short > 0 {
        eprintln!(
            "[weft] warning: {server}: {short} of {requests} requests did not return \
             {max_tokens} tokens (throughput counts the tokens they did return)"
        );
    }
    let mut ttft: Vec<f64> = samples.iter().map(|s| s.ttft * 1e3).collect();
    let mut itl: Vec<f64> = samples
        .iter()
        .flat_map(|s| s.gaps.iter().map(|g| g * 1e3))
        .collect();
    Ok(Row {
        server,
        concurrency,
        requests,
        output_tok_s: tokens as f64 / wall,
        requests_per_s: requests as f64 / wall,
        ttft_p50_ms: percentile(&mut ttft, 0.50),
        ttft_p99_ms: percentile(&mut ttft, 0.99),
        itl_p50_ms: percentile(&mut itl, 0.50),
        itl_p99_ms: percentile(&mut itl, 0.99),
    })
}

/// The nearest-rank percentile `q` of `v` (0 for an empty `v`).
fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Each field's median over repetitions.
fn median_row(rows: &[Row]) -> Row {
    let med = |f: fn(&Row) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Row {
        output_tok_s: med(|r| r.output_tok_s),
        requests_per_s: med(|r| r.requests_per_s),
        ttft_p50_ms: med(|r| r.ttft_p50_ms),
        ttft_p99_ms: med(|r| r.ttft_p99_ms),
        itl_p50_ms: med(|r| r.itl_p50_ms),
        itl_p99_ms: med(|r| r.itl_p99_ms),
        ..rows[0].clone()
    }
}

pub fn run(a: ServeBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.concurrency.is_empty() && a.concurrency.iter().all(|&c| c >= 1),
        "--concurrency takes numbers >= 1"
    );
    anyhow::ensure!(a.reps >= 1, "--reps must be at least 1");
    anyhow::ensure!(a.max_tokens >= 2, "--max-tokens must be at least 2");
    let model = a.model.path();
    anyhow::ensure!(model.exists(), "no model at {}", model.display());
    let threads = a.model.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let llama = if a.no_reference {
        None
    } else {
        let bin = a.llama_server.clone().or_else(default_llama_server);
        if bin.is_none() {
            eprintln!("[weft] no llama-server found (build it with shared/tools/llama-cpp-anchor.sh, or pass --llama-server); measuring weft alone");
        }
        bin
    };
    // The prompt is about 40 tokens; slack for the tokenizers' differences.
    let prompt_tokens = 48;
    let per_slot = (prompt_tokens + a.max_tokens + 64).next_multiple_of(256);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = Duration::from_secs(a.startup_timeout);
    let mut rows: Vec<Row> = Vec::new();
    runtime.block_on(async {
        let mut weft = start_weft(&model, threads)?;
        wait_ready(&mut weft, timeout, "weft serve").await?;
        let mut first = 0;
        for &c in &a.concurrency {
            let requests = a.requests.unwrap_or((4 * c).max(8));
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for rep in 0..a.reps {
                eprintln!(
                    "[weft] concurrency {c}, repetition {}/{}: weft serve",
                    rep + 1,
                    a.reps
                );
                ours.push(level("weft", &weft.base, c, requests, a.max_tokens, first).await?);
                if let Some(bin) = &llama {
                    eprintln!(
                        "[weft] concurrency {c}, repetition {}/{}: llama-server -np {c}",
                        rep + 1,
                        a.reps
                    );
                    let mut server = start_llama(bin, &model, threads, c, per_slot)?;
                    wait_ready(&mut server, timeout, "llama-server").await?;
                    theirs.push(
                        level(
                            "llama-server",
                            &server.base,
                            c,
                            requests,
                            a.max_tokens,
                            first,
                        )
                        .await?,
                    );
                }
                // Fresh prompts for every run: no server finds them cached.
                first += requests;
            }
            rows.push(median_row(&ours));
            if !theirs.is_empty() {
                rows.push(median_row(&theirs));
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let throughput_ratio: Vec<(usize, f64)> = a
        .concurrency
        .iter()
        .filter_map(|&c| {
            let of = |s: &str| rows.iter().find(|r| r.server == s && r.concurrency == c);
            Some((
                c,
                of("weft")?.output_tok_s / of("llama-server")?.output_tok_s,
            ))
        })
        .collect();
    let report = Report {
        model: model.display().to_string(),
        threads,
        max_tokens: a.max_tokens,
        prompt_tokens_approx: prompt_tokens,
        rows,
        throughput_ratio,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "weft bench serve: {} · {} · {} new tokens per request (ignore_eos, greedy) · streamed /v1/completions",
        report.model,
        super::threads::plural(report.threads, "thread"),
        report.max_tokens
    );
    println!(
        "{:>5}  {:<13} {:>5} {:>9} {:>7} {:>10} {:>10} {:>9} {:>9}",
        "conc",
        "server",
        "reqs",
        "out tok/s",
        "req/s",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "ITL p99"
    );
    for r in &report.rows {
        println!(
            "{:>5}  {:<13} {:>5} {:>9.1} {:>7.2} {:>8.0}ms {:>8.0}ms {:>7.1}ms {:>7.1}ms",
            r.concurrency,
            r.server,
            r.requests,
            r.output_tok_s,
            r.requests_per_s,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.itl_p50_ms,
            r.itl_p99_ms
        );
    }
    for (c, ratio) in &report.throughput_ratio {
        println!("concurrency {c:>3}: weft / llama-server output throughput {ratio:.2}x");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut [3.0], 0.99), 3.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn prompts_differ_from_their_first_token() {
        assert_ne!(prompt(1)[..2], prompt(2)[..2]);
        assert!(prompt(12).starts_with("12. "));
    }
}
