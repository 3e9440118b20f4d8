//! `weft-remote` against real servers started here on loopback, on the
//! SmolLM2 test model: llama-server (built by `scripts/llama-cpp-tools.sh`)
//! and `weft serve`. Each streams a greedy completion with `usage`, reports
//! the prompt tokens it took from its prefix cache on a repeated prompt,
//! and with two backends of which one is killed, requests finish on the
//! other.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_remote::{CompletionRequest, Pool, PoolConfig, Timeouts, Usage};

fn model() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn llama_server() -> PathBuf {
    let dir = std::env::var_os("LLAMA_ANCHOR_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/llama-cpp-anchor")
        });
    let bin = dir.join("build/bin/llama-server");
    assert!(
        bin.exists(),
        "{} is missing: build it with `bash scripts/llama-cpp-tools.sh` (the test command does)",
        bin.display()
    );
    bin
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ready(url: &str, child: &mut Child) {
    let t = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server at {url} exited at start: {status}");
        }
        if let Ok(r) = reqwest::get(format!("{url}/v1/models")).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{url} never came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_llama_server() -> Server {
    let port = free_port();
    let mut child = Command::new(llama_server())
        .args(["-m"])
        .arg(model())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-c", "2048", "-np", "1", "-t", "2", "--no-webui"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start llama-server");
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url, &mut child).await;
    Server { child, url }
}

async fn start_weft_serve() -> Server {
    start_weft_serve_with(&["--kv-mib", "64"]).await
}

async fn start_weft_serve_with(extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--model"])
        .arg(model())
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weft serve");
    // It prints the address it bound on stderr.
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("weft serve exited before serving")
            .unwrap();
        if let Some(at) = line.find("http://127.0.0.1:") {
            let rest = &line[at..];
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    wait_ready(&url, &mut child).await;
    Server { child, url }
}

fn pool(urls: &[&str]) -> Pool {
    let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
    Pool::new(
        &urls,
        PoolConfig {
            timeouts: Timeouts {
                connect: Duration::from_secs(2),
                first_byte: Duration::from_secs(60),
                idle: Duration::from_secs(30),
            },
            backoff: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .unwrap()
}

const PROMPT: &str = "A list of the planets of the solar system, in order from the sun, with one fact about each:\n1. Mercury";

async fn complete(pool: &Pool) -> (String, Usage, usize) {
    let req = CompletionRequest::greedy(PROMPT, 12);
    let mut s = pool.stream(&req, None).await.unwrap();
    let (mut text, mut usage) = (String::new(), None);
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        text.push_str(&c.text);
        usage = usage.or(c.usage);
    }
    (text, usage.expect("no usage chunk"), s.backend())
}

async fn streams_with_usage_and_cache(server: &Server) {
    let pool = pool(&[&server.url]);
    pool.check().await.unwrap();
    let (text, first, _) = complete(&pool).await;
    assert!(!text.trim().is_empty(), "no text from {}", server.url);
    assert!(first.prompt_tokens >= 20, "{first:?}");
    assert!(
        first.completion_tokens >= 1 && first.completion_tokens <= 12,
        "{first:?}"
    );
    // The same prompt again: most of it comes from the prefix cache.
    let (again, second, _) = complete(&pool).await;
    assert_eq!(again, text, "greedy decoding differs between two runs");
    let cached = second
        .cached_tokens
        .expect("the server reports no cached tokens");
    assert!(
        cached * 2 >= second.prompt_tokens && cached <= second.prompt_tokens,
        "{} took {cached} of {} prompt tokens from its cache",
        server.url,
        second.prompt_tokens
    );
}

#[tokio::test]
async fn llama_server_streams_usage_and_cached_prompt_tokens() {
    let s = start_llama_server().await;
    streams_with_usage_and_cache(&s).await;
}

#[tokio::test]
async fn weft_serve_streams_usage_and_cached_prompt_tokens() {
    let s = start_weft_serve().await;
    streams_with_usage_and_cache(&s).await;
}

#[tokio::test]
async fn with_one_of_two_real_backends_killed_requests_finish_on_the_other() {
    let a = start_weft_serve().await;
    let mut b = start_llama_server().await;
    let pool = pool(&[&a.url, &b.url]);
    pool.check().await.unwrap();
    // The two name the model differently: requests leave `model` empty and
    // each backend gets its own name.
    let _ = b.child.kill();
    let _ = b.child.wait();
    for _ in 0..3 {
        let req = CompletionRequest::greedy(PROMPT, 4);
        let mut s = pool.stream(&req, Some(1)).await.unwrap();
        assert_eq!(s.backend(), 0, "a request went to the killed backend");
        while let Some(c) = s.next().await {
            c.unwrap();
        }
    }
    assert!(!pool.status()[1].healthy);
}

// ---- The engine's thread trees on remote servers ----

use std::sync::Arc;
use weft_engine::{Engine, EngineConfig, RequestSpec, Response};

fn local() -> (weft_model::Model, weft_model::Tokenizer) {
    let opts = weft_model::LoadOptions::default();
    (
        weft_model::Model::load(&model(), &opts).unwrap(),
        weft_model::Tokenizer::load(&model()).unwrap(),
    )
}

const TW_PROMPT: &str = "Question: how far apart are (1, 2) and (7, -7)?\n<think>\n<Parallel>\n<Outlines>\n<Outline>1: Compute (dx)^2.</Outline>\n<Outline>2: Compute (dy)^2.</Outline>\n<Outline>3: Add them.</Outline>\n<Outline>4: Take the square root.</Outline>\n</Outlines>";

fn specs(protocol: Option<&str>, prompt: &str) -> Vec<RequestSpec> {
    let mut s = RequestSpec::text(prompt.to_string());
    s.max_tokens = Some(16);
    if let Some(p) = protocol {
        // Forks under budgets of a few tokens: Multiverse's budget guard
        // would refuse them.
        let options = match p {
            "multiverse" => vec![("fork_budget_margin".to_string(), "none".to_string())],
            _ => Vec::new(),
        };
        s = s.with_protocol(Arc::from(weft_protocol::with_options(p, &options).unwrap()));
    }
    vec![s]
}

fn run_native(protocol: Option<&str>, prompt: &str) -> Response {
    let (m, tok) = local();
    let cfg = EngineConfig {
        max_tokens_per_thread: 16,
        ..Default::default()
    };
    let mut e = Engine::new(&m, &tok, cfg).unwrap();
    e.run(specs(protocol, prompt), &mut |_| {})
        .unwrap()
        .remove(0)
}

fn run_remote(url: &str, protocol: Option<&str>, prompt: &str) -> Response {
    let (m, tok) = local();
    let cfg = EngineConfig {
        max_tokens_per_thread: 16,
        ..Default::default()
    };
    let pool = pool(&[url]);
    let mut e = Engine::remote(&tok, cfg, pool, m.config.max_context).unwrap();
    e.run(specs(protocol, prompt), &mut |_| {})
        .unwrap()
        .remove(0)
}

fn structure(r: &Response) -> Vec<(Option<usize>, usize)> {
    r.threads.iter().map(|t| (t.parent, t.id)).collect()
}

#[test]
fn a_plain_request_on_weft_serve_gives_the_native_text() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(start_weft_serve());
    let native = run_native(None, PROMPT);
    let remote = std::thread::scope(|sc| {
        sc.spawn(|| run_remote(&s.url, None, PROMPT))
            .join()
            .unwrap()
    });
    assert_eq!(remote.text, native.text);
    assert_eq!(remote.finish_reason, native.finish_reason);
    // The server's token counts (its ids), which are the native ones.
    assert_eq!(remote.stats.total_tokens, native.stats.total_tokens);
    assert_eq!(remote.stats.remote_prompt_tokens, native.prompt_tokens);
    assert_eq!(remote.stats.remote_cache_segments, 1);
}

#[test]
fn a_forced_threadweaver_fork_gives_the_native_tree_on_both_servers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let native = run_native(Some("threadweaver"), TW_PROMPT);
    assert_eq!(native.threads.len(), 5, "{:#?}", native.threads);
    let servers = [
        rt.block_on(start_weft_serve()),
        rt.block_on(start_llama_server()),
    ];
    let weft_url = servers[0].url.clone();
    for s in servers {
        let remote = std::thread::scope(|sc| {
            sc.spawn(|| run_remote(&s.url, Some("threadweaver"), TW_PROMPT))
                .join()
                .unwrap()
        });
        assert_eq!(structure(&remote), structure(&native), "{}", s.url);
        assert_eq!(remote.stats.forks, 1);
        // Every segment's server said how much of its prompt came from
        // its cache, on every chunk (llama-server's `timings_per_token`,
        // `weft serve`'s `continuous_usage_stats`): also the segments cut
        // at a trigger. The prompt ends in the fork, so the root first
        // sends it alone (a warm-up), then the four children, then the
        // joined root: 6 segments. On `weft serve` (one prefix cache for
        // all requests) the children and the joined root reuse what the
        // warm-up computed; llama-server's cache is per slot.
        let st = &remote.stats;
        assert_eq!(st.remote_segments, 6, "{} {st:?}", s.url);
        assert_eq!(
            st.remote_cache_segments, st.remote_segments,
            "{} {st:?}",
            s.url
        );
        assert!(st.prefill_tokens_saved > 0, "{} {st:?}", s.url);
        if s.url == weft_url {
            assert!(
                st.prefill_tokens_saved * 2 > st.remote_prompt_tokens,
                "{} {st:?}",
                s.url
            );
        }
        assert_eq!(
            st.prefill_tokens + st.prefill_tokens_saved,
            st.remote_prompt_tokens
        );
        assert!(
            !remote.stats.approximate_join,
            "ThreadWeaver joins re-prefill natively too"
        );
        // The prompt ends in the fork: nothing is generated before it, as
        // natively (the text before the first thread is the same).
        let first = |t: &str| t.find("<Thread>\n1:").unwrap_or(t.len());
        assert_eq!(
            &remote.text[..first(&remote.text)],
            &native.text[..first(&native.text)],
            "{}",
            s.url
        );
        // Every child's result is in the joined text, in outline order.
        let mut at = 0;
        for i in 1..=4 {
            let label = format!("<Thread>\n{i}:");
            at = remote.text[at..]
                .find(&label)
                .map(|p| p + at)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: thread {i} missing from the join: {:?}",
                        s.url, remote.text
                    )
                });
        }
    }
}

const MV_PROMPT: &str = "Question: what is 17 * 23?\n<Parallel>\n<Goal>\n<Outline>1: Compute 17 * 20.</Outline>\n<Outline>2: Compute 17 * 3.</Outline>\n<Outline>3: Add the two parts.</Outline>\n</Goal>";

#[test]
fn a_kv_merge_protocol_on_a_remote_server_says_its_joins_are_approximate() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(start_weft_serve());
    let native = run_native(Some("multiverse"), MV_PROMPT);
    assert!(native.stats.kv_merge_joins >= 1 && !native.stats.approximate_join);
    let remote = std::thread::scope(|sc| {
        sc.spawn(|| run_remote(&s.url, Some("multiverse"), MV_PROMPT))
            .join()
            .unwrap()
    });
    assert_eq!(structure(&remote), structure(&native));
    assert_eq!(remote.stats.kv_merge_joins, 0);
    assert!(remote.stats.approximate_join);
}

#[test]
fn weft_run_with_a_backend_prints_the_native_text_and_explains_a_dead_one() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(start_weft_serve());
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["run", "--model"])
            .arg(model())
            .args(["-n", "12", "--prompt", "The capital of France is"])
            .args(extra)
            .output()
            .unwrap()
    };
    let native = run(&[]);
    let remote = run(&["--backend", &s.url]);
    assert!(
        remote.status.success(),
        "{}",
        String::from_utf8_lossy(&remote.stderr)
    );
    assert!(!native.stdout.is_empty());
    assert_eq!(remote.stdout, native.stdout);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = run(&["--backend", &dead]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: no backend can take the request") && err.contains(&dead),
        "{err}"
    );
}

#[test]
fn weft_serve_as_a_front_over_a_backend_serves_the_native_text_and_trees() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let back = rt.block_on(start_weft_serve());
    let front = rt.block_on(start_weft_serve_with(&["--backend", &back.url]));
    let native = run_native(None, PROMPT);
    // A streamed plain completion through the front.
    let pool = pool(&[&front.url]);
    let served = rt.block_on(pool.check()).unwrap();
    let stream = || {
        rt.block_on(async {
            let mut s = pool
                .stream(&CompletionRequest::greedy(PROMPT, 16), None)
                .await
                .unwrap();
            let (mut text, mut chunks) = (String::new(), Vec::new());
            while let Some(c) = s.next().await {
                let c = c.unwrap();
                text.push_str(&c.text);
                chunks.push(c);
            }
            (text, chunks)
        })
    };
    let (text, chunks) = stream();
    assert_eq!(text, native.text);
    // The front passes the server's counts on as vLLM does: ids and the
    // running usage on every chunk with text.
    for c in chunks.iter().filter(|c| !c.text.is_empty()) {
        assert!(c.token_ids.is_some() && c.usage.is_some(), "{c:?}");
    }
    let ids: usize = chunks
        .iter()
        .filter_map(|c| c.token_ids.as_ref())
        .map(Vec::len)
        .sum();
    assert_eq!(ids, native.stats.total_tokens);
    // The same prompt again: the backend's prefix cache, reported through
    // the front (`prompt_tokens_details.cached_tokens`).
    let (_, again) = stream();
    let last = again.iter().rev().find_map(|c| c.usage).unwrap();
    assert!(last.cached_tokens.unwrap_or(0) >= 16, "{last:?}");
    // A thread tree through the front, on the backend.
    let tree = run_native(Some("threadweaver"), TW_PROMPT);
    let body = serde_json::json!({"model": served, "prompt": TW_PROMPT, "max_tokens": 16,
        "temperature": 0, "parallel": {"protocol": "threadweaver"}});
    let v: serde_json::Value = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/v1/completions", front.url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let threads = v["choices"][0]["weft"]["threads"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(threads.len(), tree.threads.len(), "{v}");
    assert_eq!(v["choices"][0]["weft"]["stats"]["forks"], 1);
}

/// Countdown through `weft serve --model models/countdown-apr` as a remote
/// backend: the same accuracy on 50 held-out problems as in this process
/// (greedy; the same trees, so the same problems solved).
#[test]
fn countdown_through_weft_serve_as_a_backend_keeps_its_accuracy() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let apr = root.join("models/countdown-apr");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--model"])
        .arg(&apr)
        .args(["--host", "127.0.0.1", "--port", &free_port().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines.next().expect("weft serve exited").unwrap();
        if let Some(at) = line.find("http://127.0.0.1:") {
            break line[at..].split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    rt.block_on(wait_ready(&url, &mut child));
    let server = Server { child, url };
    let dir = std::env::temp_dir().join(format!("weft-remote-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let eval = |report: &str, extra: &[&str]| {
        let path = dir.join(report);
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["eval", "countdown", "--model"])
            .arg(&apr)
            .arg("--problems")
            .arg(root.join("models/heldout.jsonl"))
            .args(["--limit", "50", "--budgets", "512", "--json"])
            .arg(&path)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let b = &v["budgets"][0];
        let solved: Vec<bool> = b["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["correct"].as_bool().unwrap())
            .collect();
        (
            b["accuracy"].as_f64().unwrap(),
            solved,
            b["children"]["mean"].as_f64(),
        )
    };
    let native = eval("native.json", &[]);
    let remote = eval("remote.json", &["--backend", &server.url]);
    assert_eq!(native.1.len(), 50);
    assert!(
        native.0 > 0.3,
        "the shipped model solves too little: {}",
        native.0
    );
    assert_eq!(remote.0, native.0, "accuracy through the backend");
    assert_eq!(remote.1, native.1, "problems solved");
    assert_eq!(remote.2, native.2, "children per problem");
    let _ = std::fs::remove_dir_all(dir);
}

/// Greedy text on llama-server equals the native engine's, or diverges
/// only where the native engine's top two tokens are a near-tie (as
/// `llama_cpp_parity.rs` accepts: probabilities within 0.02).
#[test]
fn greedy_text_on_llama_server_is_the_native_text_up_to_a_near_tie() {
    const NEAR_TIE: f32 = 0.02;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(start_llama_server());
    let (m, tok) = local();
    let prompts = [
        PROMPT,
        "The capital of France is",
        "def fibonacci(n):\n",
        "Water boils at",
    ];
    for prompt in prompts {
        let native = run_native(None, prompt);
        let remote = std::thread::scope(|sc| {
            sc.spawn(|| run_remote(&s.url, None, prompt))
                .join()
                .unwrap()
        });
        if remote.text == native.text {
            continue;
        }
        // The first native token whose text leaves the remote text.
        let root = &native.threads[0];
        let generated = &root.tokens[root.prompt_tokens..];
        let mut at = generated.len();
        for i in 1..=generated.len() {
            let text = tok.decode(&generated[..i]).unwrap();
            if !remote.text.starts_with(text.trim_end_matches('\u{fffd}')) {
                at = i - 1;
                break;
            }
        }
        assert!(
            at < generated.len(),
            "{prompt:?}: texts differ but no token does"
        );
        let mut session = weft_model::session::Session::new(&m, root.tokens.len() + 1);
        let logits = session
            .feed(&root.tokens[..root.prompt_tokens + at], false)
            .unwrap();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        probs.sort_by(|a, b| b.total_cmp(a));
        let gap = probs[0] - probs[1];
        assert!(
            gap < NEAR_TIE,
            "{prompt:?}: llama-server's greedy text leaves the native one at token {at} where the top-2 gap is {gap:.4} (not a near-tie)\n  native {:?}\n  remote {:?}",
            native.text,
            remote.text
        );
        eprintln!("near-tie divergence accepted: {prompt:?} at token {at} (gap {gap:.4})");
    }
}

/// A backend killed while a tree streams from it: the request ends with
/// `finish_reason: error` and a note naming the server, within seconds (a
/// reset, not a timeout), never a hang.
#[test]
fn a_backend_killed_mid_tree_ends_the_request_with_an_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, tok) = local();
    // Long enough to be mid-stream when the server is killed, and within
    // the server's KV (`--kv-mib 64`: about 2900 tokens).
    let cfg = EngineConfig {
        max_tokens_per_thread: 1500,
        ..Default::default()
    };
    let long = |engine: &mut Engine| {
        let mut spec = RequestSpec::text(PROMPT.to_string());
        spec.max_tokens = Some(1500);
        spec.ignore_eos = true;
        engine.add(spec).unwrap()
    };
    let s = rt.block_on(start_weft_serve());
    // Killed mid-stream: an error, within seconds (a reset, not a timeout).
    let mut engine = Engine::remote(&tok, cfg, pool(&[&s.url]), 8192).unwrap();
    long(&mut engine);
    let mut killed = false;
    let mut server = Some(s);
    let t = Instant::now();
    let response = loop {
        assert!(t.elapsed() < Duration::from_secs(20), "the request hangs");
        let mut done = None;
        for e in engine.step().unwrap() {
            if matches!(e, weft_engine::Event::Text { .. }) && !killed {
                drop(server.take());
                killed = true;
            }
            if let weft_engine::Event::Finished { response, .. } = e {
                done = Some(*response);
            }
        }
        if let Some(r) = done {
            break r;
        }
    };
    assert_eq!(response.finish_reason, weft_engine::FinishReason::Error);
    assert!(
        response
            .stats
            .refused_forks
            .iter()
            .any(|n| n.contains("127.0.0.1")),
        "{:?}",
        response.stats.refused_forks
    );
}

/// Aborting a tree drops its streams at once: the backend stops the request
/// (its `weft:num_requests_running` falls to 0) long before the request
/// could end by itself (1500 tokens, end of sequence ignored).
#[test]
fn aborting_a_remote_tree_stops_it_on_the_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, tok) = local();
    let s = rt.block_on(start_weft_serve());
    let running = || -> f64 {
        let text = rt.block_on(async {
            reqwest::get(format!("{}/metrics", s.url))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        text.lines()
            .find(|l| l.starts_with("weft:num_requests_running"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let cfg = EngineConfig {
        max_tokens_per_thread: 1500,
        ..Default::default()
    };
    let mut engine = Engine::remote(&tok, cfg, pool(&[&s.url]), 8192).unwrap();
    let mut spec = RequestSpec::text(PROMPT.to_string());
    spec.max_tokens = Some(1500);
    spec.ignore_eos = true;
    let id = engine.add(spec).unwrap();
    let (mut texts, t) = (0, Instant::now());
    while texts < 5 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no text from the backend"
        );
        texts += engine
            .step()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, weft_engine::Event::Text { .. }))
            .count();
    }
    // Without an abort the server goes on (ignore_eos is forwarded).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(running(), 1.0, "the request ended by itself");
    assert!(engine.abort(id));
    let t = Instant::now();
    while running() != 0.0 {
        assert!(
            t.elapsed() < Duration::from_millis(700),
            "the server still runs the aborted request"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The backend flags as a user meets them: the key's environment variable
/// does not make local runs want a backend; URLs that cannot work are
/// refused at once, saying why.
#[test]
fn backend_settings_are_checked_and_stay_out_of_local_runs() {
    let weft = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_weft"));
        c.args(["run", "--model"])
            .arg(model())
            .args(["--prompt", "Hi", "-n", "2"]);
        c
    };
    let o = weft()
        .env("WEFT_BACKEND_API_KEY", "sekrit")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (url, says) in [
        ("127.0.0.1:8000", "no scheme"),
        ("https://127.0.0.1:8000", "https is not supported"),
        ("http://127.0.0.1:1,", "empty URL"),
    ] {
        let o = weft().args(["--backend", url]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{url}: {err}");
        assert!(err.contains(says), "{url}: {err}");
    }
}
