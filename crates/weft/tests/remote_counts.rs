//! Token counts of remote threads come from the servers, not from
//! re-tokenizing their text here: a scripted server on loopback streams
//! text whose token ids (vLLM's `return_token_ids`) or running counts
//! (llama-server's `timings_per_token`) differ on purpose from what the
//! local tokenizer makes of it, and the engine's events and stats must carry
//! the server's figures. Also: what the requests ask the servers for.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use weft_engine::{Engine, EngineConfig, Event, RequestSpec, Response};
use weft_remote::{Pool, PoolConfig};

fn model() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[derive(Clone, Copy)]
enum Style {
    /// vLLM: `token_ids` and a running `usage` on every chunk, the cache
    /// count in the last usage chunk only.
    Vllm,
    /// llama-server: `timings` on every chunk, no ids.
    LlamaServer,
}

const PIECES: [&str; 3] = [" one", " two", " three"];

fn sse(v: Value) -> String {
    format!("data: {v}\n\n")
}

/// The scripted stream: each piece is 3 tokens by the server's count.
fn script(style: Style) -> String {
    let mut out = String::new();
    for (i, p) in PIECES.iter().enumerate() {
        let done = 3 * (i as u64 + 1);
        let finish = (i == PIECES.len() - 1).then_some("stop");
        let mut c = json!({"id": "c", "object": "text_completion", "model": "m",
            "choices": [{"index": 0, "text": p, "finish_reason": finish}]});
        match style {
            Style::Vllm => {
                c["choices"][0]["token_ids"] = json!([900 + i, 901 + i, 902 + i]);
                c["usage"] = json!({"prompt_tokens": 123, "completion_tokens": done, "total_tokens": 123 + done});
            }
            Style::LlamaServer => {
                c["timings"] = json!({"cache_n": 100, "prompt_n": 23, "predicted_n": done});
            }
        }
        out += &sse(c);
    }
    if let Style::Vllm = style {
        out += &sse(
            json!({"id": "c", "object": "text_completion", "model": "m", "choices": [],
            "usage": {"prompt_tokens": 123, "completion_tokens": 9, "total_tokens": 132,
                      "prompt_tokens_details": {"cached_tokens": 120}}}),
        );
    }
    out + "data: [DONE]\n\n"
}

/// Serves the script on loopback; returns its URL and the request bodies.
fn serve(rt: &tokio::runtime::Runtime, style: Style) -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let app = Router::new()
        .route(
            "/v1/models",
            get(|| async {
                axum::Json(json!({"object": "list", "data": [{"id": "m", "object": "model"}]}))
            }),
        )
        .route(
            "/v1/completions",
            post(move |axum::Json(body): axum::Json<Value>| {
                seen.lock().unwrap().push(body);
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
                        script(style),
                    )
                }
            }),
        );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, bodies)
}

fn run(url: &str, spec: RequestSpec) -> (Response, Vec<Vec<u32>>) {
    let tok = weft_model::Tokenizer::load(&model()).unwrap();
    let pool = Pool::new(&[url.to_string()], PoolConfig::default()).unwrap();
    let mut e = Engine::remote(&tok, EngineConfig::default(), pool, 8192).unwrap();
    let mut ids = Vec::new();
    let r = e
        .run(vec![spec], &mut |ev| {
            if let Event::Text { token_ids, .. } = ev {
                ids.push(token_ids.clone());
            }
        })
        .unwrap()
        .remove(0);
    (r, ids)
}

fn spec() -> RequestSpec {
    let mut s = RequestSpec::text("Count:".to_string());
    s.max_tokens = Some(64);
    s
}

#[test]
fn vllm_token_ids_and_usage_are_the_counts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, bodies) = serve(&rt, Style::Vllm);
    let (r, ids) = run(&url, spec());
    assert_eq!(r.text, " one two three");
    // The server's ids, not the local tokenizer's (one token per word).
    assert_eq!(
        ids,
        vec![
            vec![900, 901, 902],
            vec![901, 902, 903],
            vec![902, 903, 904]
        ]
    );
    assert_eq!(r.stats.total_tokens, 9);
    assert_eq!(
        r.stats.remote_prompt_tokens, 123,
        "the server's prompt count"
    );
    assert_eq!(
        (r.stats.prefill_tokens, r.stats.prefill_tokens_saved),
        (3, 120)
    );
    assert_eq!(
        (r.stats.remote_segments, r.stats.remote_cache_segments),
        (1, 1)
    );
    // What was asked for: every server's counts, plain text.
    let b = &bodies.lock().unwrap()[0];
    assert_eq!(b["return_token_ids"], true);
    assert_eq!(b["timings_per_token"], true);
    assert_eq!(b["stream_options"]["continuous_usage_stats"], true);
    assert!(b["parallel"].is_null());
    assert!(b.get("repetition_penalty").is_none());
}

#[test]
fn llama_server_running_counts_are_the_counts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, _) = serve(&rt, Style::LlamaServer);
    let (r, ids) = run(&url, spec());
    assert_eq!(r.text, " one two three");
    // No ids from this server: the local tokenizer's, one per word...
    assert!(ids.iter().all(|i| i.len() == 1), "{ids:?}");
    // ...but the server's count: 3 per piece.
    assert_eq!(r.stats.total_tokens, 9);
    assert_eq!(r.stats.remote_prompt_tokens, 123);
    assert_eq!(
        (r.stats.prefill_tokens, r.stats.prefill_tokens_saved),
        (23, 100)
    );
    assert_eq!(r.stats.remote_cache_segments, 1);
}

#[test]
fn a_repetition_penalty_is_forwarded_under_both_names() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, bodies) = serve(&rt, Style::LlamaServer);
    let mut s = spec();
    s.sampling.repetition_penalty = 1.25;
    run(&url, s);
    let b = &bodies.lock().unwrap()[0];
    assert_eq!(b["repetition_penalty"].as_f64(), Some(1.25));
    assert_eq!(b["repeat_penalty"].as_f64(), Some(1.25));
}
