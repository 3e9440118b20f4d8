//! The server end to end on SmolLM2, over real HTTP on 127.0.0.1, with the
//! shapes OpenAI clients read.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};
use weft_engine::EngineConfig;
use weft_model::{LoadOptions, Model, Tokenizer};
use weft_server::{EngineHandle, ServerConfig};

const NAME: &str = "smollm2";

/// One server for every test here (plain requests by default), one that
/// runs ThreadWeaver and wants an API key, and one that takes a single
/// request at a time.
fn model_path() -> std::path::PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    std::path::PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn servers() -> &'static (SocketAddr, SocketAddr, SocketAddr) {
    static S: OnceLock<(SocketAddr, SocketAddr, SocketAddr)> = OnceLock::new();
    S.get_or_init(|| {
        let path = model_path();
        let opts = LoadOptions {
            batch_invariant: true,
            ..Default::default()
        };
        let model = Arc::new(Model::load(&path, &opts).unwrap());
        let tok = Arc::new(Tokenizer::load(&path).unwrap());
        let start = |protocol: Option<&str>, key: Option<&str>, max_in_flight: usize| {
            let engine = EngineHandle::start(
                model.clone(),
                tok.clone(),
                EngineConfig {
                    max_tokens_per_thread: 24,
                    ..Default::default()
                },
                max_in_flight,
            )
            .unwrap();
            let cfg = ServerConfig {
                served_model_name: NAME.into(),
                protocol: protocol.map(String::from),
                api_key: key.map(String::from),
                special_tokens_in_content: false,
                protocol_options: Vec::new(),
            };
            weft_server::spawn(engine, cfg, "127.0.0.1:0".parse().unwrap()).unwrap()
        };
        (
            start(None, None, 64),
            start(Some("threadweaver"), Some("sekrit"), 64),
            start(None, None, 1),
        )
    })
}

fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    post_with(addr, path, body, None)
}

fn post_with(addr: SocketAddr, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .post(format!("http://{addr}{path}"))
            .json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    })
}

/// The `data:` payloads of a streamed response, `[DONE]` included.
fn post_stream(addr: SocketAddr, path: &str, body: Value) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let text = resp.text().await.unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(String::from)
            .collect()
    })
}

#[test]
fn models_lists_the_served_model() {
    let (plain, _, _) = *servers();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let v: Value = rt.block_on(async {
        reqwest::get(format!("http://{plain}/v1/models"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], NAME);
    assert_eq!(v["data"][0]["max_model_len"], 8192);
}

#[test]
fn a_greedy_completion_is_llama_cpps_continuation() {
    let (plain, _, _) = *servers();
    let (status, v) = post(
        plain,
        "/v1/completions",
        json!({"model": NAME, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    // llama.cpp's greedy continuation starts " Paris." (weft-model golden).
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(" Paris."), "{text:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(v["usage"]["prompt_tokens"], 5);
}

#[test]
fn n_choices_are_distinct_and_reproducible_with_a_seed() {
    let (plain, _, _) = *servers();
    let body = json!({
        "messages": [{"role": "user", "content": "Write a word."}],
        "max_tokens": 12, "temperature": 1.0, "seed": 11, "n": 3,
    });
    let (status, a) = post(plain, "/v1/chat/completions", body.clone());
    assert_eq!(status, 200, "{a}");
    let (_, b) = post(plain, "/v1/chat/completions", body);
    let texts = |v: &Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(texts(&a), texts(&b), "same seed, other choices");
    let t = texts(&a);
    assert_eq!(t.len(), 3);
    assert!(t[0] != t[1] || t[1] != t[2], "{t:?}");
    // One prompt, counted once.
    let single = post(
        plain,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Write a word."}], "max_tokens": 1}),
    )
    .1;
    assert_eq!(
        a["usage"]["prompt_tokens"],
        single["usage"]["prompt_tokens"]
    );
}

#[test]
fn a_stream_adds_up_to_the_whole_response() {
    let (plain, _, _) = *servers();
    let body = json!({
        "messages": [{"role": "user", "content": "Name a color."}],
        "max_tokens": 16, "temperature": 0,
    });
    let (_, whole) = post(plain, "/v1/chat/completions", body.clone());
    let mut streamed = body;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = post_stream(plain, "/v1/chat/completions", streamed);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, whole["choices"][0]["message"]["content"]);
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, whole["choices"][0]["finish_reason"].as_str());
    let usage = &chunks.last().unwrap()["usage"];
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[k], whole["usage"][k], "{k}");
    }
    // The same prompt a second time: its full blocks come from the prefix
    // cache (vLLM's `prompt_tokens_details.cached_tokens`).
    let cached = |u: &Value| {
        u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert!(cached(usage) >= cached(&whole["usage"]) && cached(usage) < prompt);
    assert!(cached(usage) >= prompt / 16 * 16 - 16, "{usage}");
}

#[test]
fn bad_requests_get_openai_errors_naming_the_field() {
    let (plain, _, _) = *servers();
    for (body, param, status) in [
        (json!({"prompt": "x", "top_p": 5}), "top_p", 400),
        (
            json!({"prompt": "x", "temperature": -1}),
            "temperature",
            400,
        ),
        (json!({"prompt": "x", "stop": ""}), "stop", 400),
        (json!({"prompt": "x", "n": 0}), "n", 400),
        (
            json!({"prompt": "x", "max_tokens": 100000}),
            "max_tokens",
            400,
        ),
        (json!({"prompt": ""}), "prompt", 400),
        (json!({"prompt": 7}), "prompt", 400),
        (json!({"model": "gpt-4", "prompt": "x"}), "model", 404),
        (
            json!({"prompt": "x", "parallel": {"protocol": "tot"}}),
            "parallel.protocol",
            400,
        ),
        (json!({"prompt": "x", "logprobs": 50}), "logprobs", 400),
        // Fields that would change the result and are not implemented are
        // refused, not ignored.
        (
            json!({"prompt": "x", "presence_penalty": 0.5}),
            "presence_penalty",
            400,
        ),
        (
            json!({"prompt": "x", "logit_bias": {"1": 5}}),
            "logit_bias",
            400,
        ),
        (
            json!({"prompt": "x", "response_format": {"type": "json_object"}}),
            "response_format",
            400,
        ),
        (json!({"prompt": "x", "echo": true}), "echo", 400),
        (
            json!({"prompt": "x", "skip_special_tokens": true}),
            "skip_special_tokens",
            400,
        ),
        // A field of the wrong type is named by its path.
        (json!({"prompt": "x", "max_tokens": "8"}), "max_tokens", 400),
        (json!({"prompt": "x", "max_tokens": 2.5}), "max_tokens", 400),
        (
            json!({"prompt": "x", "temperature": "hot"}),
            "temperature",
            400,
        ),
        (json!({"prompt": "x", "stream": 1}), "stream", 400),
        (
            json!({"prompt": "x", "stream_options": {"include_usage": "yes"}}),
            "stream_options.include_usage",
            400,
        ),
        (
            json!({"prompt": "x", "parallel": {"max_depth": -1}}),
            "parallel.max_depth",
            400,
        ),
    ] {
        let (got, v) = post(plain, "/v1/completions", body.clone());
        assert_eq!(got, status, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (got, v) = post(plain, "/v1/chat/completions", json!({"messages": []}));
    assert_eq!((got, v["error"]["param"].as_str()), (400, Some("messages")));
    let (got, v) = post(
        plain,
        "/v1/chat/completions",
        json!({"messages": [{"role": "wizard", "content": "hi"}]}),
    );
    assert_eq!(
        (got, v["error"]["param"].as_str()),
        (400, Some("messages")),
        "{v}"
    );
    let (got, v) = post(
        plain,
        "/v1/chat/completions",
        json!({"messages": [{"role": 5, "content": "hi"}]}),
    );
    assert_eq!(
        (got, v["error"]["param"].as_str()),
        (400, Some("messages[0].role")),
        "{v}"
    );
    let (got, v) = post(
        plain,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}],
               "continue_final_message": true, "add_generation_prompt": true}),
    );
    assert_eq!(
        (got, v["error"]["param"].as_str()),
        (400, Some("continue_final_message")),
        "{v}"
    );
    let (got, v) = post(
        plain,
        "/v1/completions",
        json!({"prompt": "x", "stream_options": {"include_usage": true}}),
    );
    assert_eq!(
        (got, v["error"]["param"].as_str()),
        (400, Some("stream_options")),
        "{v}"
    );
    // vLLM's stop_token_ids: the first greedy token of this prompt ends it.
    let greedy = json!({"prompt": "The capital of France is", "max_tokens": 4,
                        "temperature": 0, "logprobs": 0});
    let (_, v) = post(plain, "/v1/completions", greedy.clone());
    let first = v["choices"][0]["logprobs"]["tokens"][0]
        .as_str()
        .unwrap()
        .to_string();
    let tok = weft_model::Tokenizer::load(&model_path()).unwrap();
    let id = tok
        .token_to_id(&first.replace(' ', "Ġ"))
        .expect("the first token's id");
    let mut stopped = greedy;
    stopped["stop_token_ids"] = json!([id]);
    let (got, v) = post(plain, "/v1/completions", stopped);
    assert_eq!(got, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], "", "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    // Their "off" values and fields that change nothing are accepted.
    let (got, v) = post(
        plain,
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": 1, "presence_penalty": 0, "frequency_penalty": 0.0,
               "logit_bias": {}, "echo": false, "best_of": 1, "user": "u1", "typical_p": 1.0,
               "repetition_penalty": 1, "skip_special_tokens": false,
               "response_format": {"type": "text"}, "tools": null}),
    );
    assert_eq!(got, 200, "{v}");
    // Integers written as floats with no fraction are integers (pydantic's
    // lax mode, as vLLM parses them).
    let (got, v) = post(
        plain,
        "/v1/completions",
        json!({"prompt": "Hello", "max_tokens": 2.0, "n": 1.0, "seed": 3.0}),
    );
    assert_eq!(got, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 2, "{v}");
    let (got, v) = post(plain, "/v1/completions", json!([1, 2]));
    assert_eq!(
        (got, v["error"]["param"].as_str()),
        (400, Some("body")),
        "{v}"
    );
    // A body over the limit: 413 in the same shape.
    let huge = "x".repeat(weft_server::MAX_BODY_BYTES + 1);
    let (got, v) = post(plain, "/v1/completions", json!({"prompt": huge}));
    assert_eq!(
        (got, v["error"]["param"].as_str()),
        (413, Some("body")),
        "{v}"
    );
    // Unknown paths and methods answer in the same error shape.
    for (path, status) in [("/v1/nope", 404), ("/v1/models", 405)] {
        let (got, v) = post(plain, path, json!({}));
        assert_eq!(got, status, "{path}");
        assert!(v["error"]["message"].is_string(), "{path}: {v}");
    }
}

#[test]
fn protocol_requests_carry_their_tree_and_need_the_key() {
    let (_, tree, _) = *servers();
    let prompt = "Question: how far apart are (1, 2) and (7, -7)?\n<Parallel>\n<Outlines>\n<Outline>1: Compute (dx)^2.</Outline>\n<Outline>2: Compute (dy)^2.</Outline>\n</Outlines>";
    let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0});
    let (status, _) = post_with(tree, "/v1/completions", body.clone(), None);
    assert_eq!(status, 401);
    let (status, v) = post_with(tree, "/v1/completions", body.clone(), Some("sekrit"));
    assert_eq!(status, 200, "{v}");
    let weft = &v["choices"][0]["weft"];
    assert_eq!(weft["protocol"], "threadweaver");
    assert!(weft["threads"].as_array().unwrap().len() >= 3, "{weft}");
    assert!(weft["stats"]["forks"].as_u64().unwrap() >= 1);
    // `"parallel": null` runs the same prompt as plain text.
    let mut plain = body;
    plain["parallel"] = Value::Null;
    let (_, v) = post_with(tree, "/v1/completions", plain, Some("sekrit"));
    assert!(v["choices"][0].get("weft").is_none(), "{v}");
}

/// The value of an unlabelled metric in `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = rt.block_on(async {
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_carry_help_lines_and_vllms_names() {
    let (plain, _, _) = *servers();
    let (status, _) = post(
        plain,
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": 2}),
    );
    assert_eq!(status, 200);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = rt.block_on(async {
        reqwest::get(format!("http://{plain}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    for name in [
        "weft:num_requests_running",
        "weft:num_requests_waiting",
        "weft:kv_cache_usage_perc",
        "weft:prompt_tokens_total",
        "weft:generation_tokens_total",
        "weft:time_to_first_token_seconds",
        "weft:e2e_request_latency_seconds",
        "weft:request_success_total",
        "weft:live_threads",
        "weft:critical_path_tokens",
        "weft:parallelism",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name} in:\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "no TYPE for {name}"
        );
    }
}

/// A client that goes away mid-stream: its request is aborted and the KV
/// cache is back at idle (seen in `/metrics`), well before the request
/// could have finished on its own.
#[test]
fn a_client_that_disconnects_mid_stream_frees_its_kv() {
    let (plain, _, _) = *servers();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    rt.block_on(async {
        let mut resp = reqwest::Client::new()
            .post(format!("http://{plain}/v1/completions"))
            .json(&json!({
                "prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": true,
                "temperature": 0, "stream": true,
            }))
            .send()
            .await
            .unwrap();
        // Read until some text has arrived, then hang up.
        let mut seen = 0;
        while seen < 3 {
            if resp.chunk().await.unwrap().is_some() {
                seen += 1;
            }
        }
        drop(resp);
    });
    // The connection closes when its runtime goes.
    drop(rt);
    let mut idle = false;
    for _ in 0..200 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if metric(plain, "weft:kv_cache_usage_perc") == Some(0.0)
            && metric(plain, "weft:num_requests_running") == Some(0.0)
        {
            idle = true;
            break;
        }
    }
    assert!(idle, "the KV cache did not return to idle");
    // 4000 tokens take far longer than this on SmolLM2.
    assert!(started.elapsed().as_secs() < 15, "{:?}", started.elapsed());
}

/// A protocol request streams the root's visible text (its own tokens and
/// what each join appends) as standard chunks, and the tree as
/// `event: weft.thread` events between them.
#[test]
fn a_protocol_stream_carries_the_text_and_the_tree() {
    let (plain, _, _) = *servers();
    let prompt = "Question: how far apart are (1, 2) and (7, -7)?\n<Parallel>\n<Outlines>\n<Outline>1: Compute (dx)^2.</Outline>\n<Outline>2: Compute (dy)^2.</Outline>\n<Outline>3: Add them.</Outline>\n</Outlines>";
    let body = json!({
        "prompt": prompt, "max_tokens": 12, "temperature": 0,
        "parallel": {"protocol": "threadweaver"},
    });
    let (_, whole) = post(plain, "/v1/completions", body.clone());
    let mut streamed = body;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_threads": true});
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let raw = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{plain}/v1/completions"))
            .json(&streamed)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    // SSE events are separated by blank lines; thread events are named.
    let mut text = String::new();
    let mut kinds = Vec::new();
    for event in raw.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or_default();
        if event.lines().any(|l| l == "event: weft.thread") {
            let v: Value = serde_json::from_str(data).unwrap();
            kinds.push(v["type"].as_str().unwrap().to_string());
        } else if data != "[DONE]" {
            let v: Value = serde_json::from_str(data).unwrap();
            text.push_str(v["choices"][0]["text"].as_str().unwrap());
        }
    }
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap(), "{raw}");
    for kind in ["start", "fork", "delta", "done", "join"] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} event: {kinds:?}"
        );
    }
    assert!(raw.trim_end().ends_with("data: [DONE]"));
}

/// Past its limit of requests in flight the server answers 503 with
/// Retry-After, and takes requests again once one ends.
#[test]
fn a_full_server_says_retry_after() {
    let (_, _, one) = *servers();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut long = client
            .post(format!("http://{one}/v1/completions"))
            .json(
                &json!({"prompt": "Once", "max_tokens": 4000, "ignore_eos": true, "stream": true}),
            )
            .send()
            .await
            .unwrap();
        assert!(long.chunk().await.unwrap().is_some());
        let busy = client
            .post(format!("http://{one}/v1/completions"))
            .json(&json!({"prompt": "x", "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(busy.status().as_u16(), 503);
        assert_eq!(busy.headers()["retry-after"], "1");
        let v: Value = busy.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains("retry"),
            "{v}"
        );
        drop(long);
    });
    drop(rt);
    // The aborted request gives its place back.
    let mut ok = false;
    for _ in 0..100 {
        let (status, _) = post(
            one,
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 2}),
        );
        if status == 200 {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(ok, "the server stayed full");
}

#[test]
fn logprobs_come_in_each_endpoints_shape() {
    let (plain, _, _) = *servers();
    let (status, v) = post(
        plain,
        "/v1/completions",
        json!({"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 2}),
    );
    assert_eq!(status, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), v["choices"][0]["text"].as_str().unwrap());
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 4);
    assert_eq!(lp["text_offset"][0], 0);
    assert!(lp["top_logprobs"][0].as_object().unwrap().len() <= 2);
    assert!(lp["token_logprobs"][0].as_f64().unwrap() <= 0.0);
    let (status, v) = post(
        plain,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
               "logprobs": true, "top_logprobs": 2}),
    );
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    let (status, v) = post(
        plain,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2}),
    );
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("top_logprobs"))
    );
}

#[test]
fn parallel_kv_merge_chooses_the_join_and_is_refused_where_it_cannot_apply() {
    let (plain, _, _) = *servers();
    let prompt = "Q: 17 * 23?\n<Parallel>\n<Goal>\n<Outline>1: 17 * 20.</Outline>\n<Outline>2: 17 * 3.</Outline>\n</Goal>";
    // Eight tokens: within 30 of the budget, where Multiverse-Engine
    // refuses to fork; `parallel.options` turns that guard off.
    let guarded = |options: Value| {
        let body = json!({"model": NAME, "prompt": prompt, "max_tokens": 8, "temperature": 0,
                          "parallel": {"protocol": "multiverse", "options": options}});
        let (status, v) = post(plain, "/v1/completions", body);
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["weft"]["stats"]["forks"].clone()
    };
    assert_eq!(guarded(json!({})), 0);
    assert_eq!(guarded(json!({"fork_budget_margin": 7})), 1);
    assert_eq!(guarded(json!({"fork_budget_margin": 8})), 0);
    let ask = |kv_merge: Option<bool>| {
        let mut parallel =
            json!({"protocol": "multiverse", "options": {"fork_budget_margin": "none"}});
        if let Some(m) = kv_merge {
            parallel["kv_merge"] = json!(m);
        }
        let body = json!({"model": NAME, "prompt": prompt, "max_tokens": 8, "temperature": 0,
                          "parallel": parallel});
        let (status, v) = post(plain, "/v1/completions", body);
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["weft"]["stats"].clone()
    };
    let merged = ask(None);
    assert_eq!(merged["forks"], 1, "{merged}");
    assert_eq!(
        merged["kv_merge_joins"], 1,
        "multiverse merges KV by default: {merged}"
    );
    assert_eq!(ask(Some(true))["kv_merge_joins"], 1);
    let reprefilled = ask(Some(false));
    assert_eq!(reprefilled["forks"], 1, "{reprefilled}");
    assert_eq!(reprefilled["kv_merge_joins"], 0, "{reprefilled}");
    // A protocol that re-prefills cannot merge.
    let body =
        json!({"model": NAME, "prompt": "x", "parallel": {"protocol": "apr", "kv_merge": true}});
    let (status, v) = post(plain, "/v1/completions", body);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "parallel.kv_merge", "{v}");
    let body = json!({"model": NAME, "prompt": "x", "parallel": {"kv_merge": "yes"}});
    let (status, v) = post(plain, "/v1/completions", body);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "parallel.kv_merge", "{v}");
    let body = json!({"model": NAME, "prompt": "x", "parallel": [1]});
    let (status, v) = post(plain, "/v1/completions", body);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "parallel", "{v}");
}

#[test]
fn max_tokens_bounds_every_thread_unless_parallel_says_otherwise() {
    let (plain, _, _) = *servers();
    let prompt = "Question: how far apart are (1, 2) and (7, -7)?\n<Parallel>\n<Outlines>\n<Outline>1: Compute (dx)^2.</Outline>\n<Outline>2: Compute (dy)^2.</Outline>\n<Outline>3: Add them.</Outline>\n</Outlines>";
    let children = |parallel: Value, max_tokens: usize| -> Vec<u64> {
        let body = json!({"model": NAME, "prompt": prompt, "max_tokens": max_tokens,
                          "temperature": 1.0, "seed": 7, "ignore_eos": true,
                          "parallel": parallel});
        let (status, v) = post(plain, "/v1/completions", body);
        assert_eq!(status, 200, "{v}");
        let threads = v["choices"][0]["weft"]["threads"]
            .as_array()
            .unwrap()
            .clone();
        assert!(threads.len() >= 4, "{v}");
        threads[1..]
            .iter()
            .map(|t| t["generated_tokens"].as_u64().unwrap())
            .collect()
    };
    // ignore_eos keeps each child decoding until a limit or `</Thread>`.
    let bounded = children(json!({"protocol": "threadweaver"}), 3);
    assert!(bounded.iter().all(|&n| n <= 3), "{bounded:?}");
    let own = children(
        json!({"protocol": "threadweaver", "max_thread_tokens": 5}),
        3,
    );
    assert!(own.iter().all(|&n| n <= 5), "{own:?}");
    assert!(own.iter().any(|&n| n > 3), "{own:?}");
    let (status, v) = post(
        plain,
        "/v1/completions",
        json!({"prompt": "x", "parallel": {"protocol": "threadweaver", "max_thread_tokens": 0}}),
    );
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "parallel.max_thread_tokens", "{v}");
}

#[test]
fn parallel_options_set_the_protocols_reference_settings() {
    let (plain, _, _) = *servers();
    let prompt = "Question: how far apart are (1, 2) and (7, -7)?\n<Parallel>\n<Outlines>\n<Outline>1: Compute (dx)^2.</Outline>\n<Outline>2: Compute (dy)^2.</Outline>\n</Outlines>";
    let ask = |options: Value| {
        let body = json!({"model": NAME, "prompt": prompt, "max_tokens": 6, "temperature": 0,
                          "parallel": {"protocol": "threadweaver", "options": options}});
        post(plain, "/v1/completions", body)
    };
    // The released checkpoints' join (`no_conclusion`) by default, the
    // config's own on request.
    let (status, v) = ask(json!({}));
    assert_eq!(status, 200, "{v}");
    let released = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(!released.contains("<Conclusion>"), "{released:?}");
    let (status, v) = ask(json!({"no_conclusion": false}));
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(text.contains("</Thread>\n<Conclusion>\n"), "{text:?}");
    for (options, what) in [
        (json!({"no_conclusoin": false}), "no_conclusoin"),
        (json!({"no_conclusion": "maybe"}), "maybe"),
        (json!({"no_conclusion": [1]}), "[1]"),
    ] {
        let (status, v) = ask(options);
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["param"], "parallel.options", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(what),
            "{v}"
        );
    }
}

#[test]
fn token_ids_and_repetition_penalty_as_vllm_takes_them() {
    let (plain, _, _) = *servers();
    let body = json!({"prompt": "The cat sat on the mat. The cat sat on the", "max_tokens": 12,
                      "temperature": 0, "stream": true, "return_token_ids": true,
                      "stop": ["zzz"],
                      "stream_options": {"include_usage": true, "continuous_usage_stats": true}});
    let events = post_stream(plain, "/v1/completions", body);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (mut ids, mut text) = (Vec::new(), String::new());
    for c in &chunks {
        if let Some(choice) = c["choices"].get(0) {
            text += choice["text"].as_str().unwrap();
            if let Some(t) = choice.get("token_ids") {
                ids.extend(
                    t.as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i.as_u64().unwrap() as u32),
                );
            }
            // vLLM's continuous usage: the running count on every chunk.
            assert_eq!(c["usage"]["completion_tokens"], json!(ids.len()), "{c}");
            assert!(c["usage"]["prompt_tokens"].as_u64().unwrap() > 5, "{c}");
            assert!(
                c["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64(),
                "{c}"
            );
        }
    }
    // Every generated token once (also those held back while they might
    // start the stop string), decoding to the text streamed.
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        ids.len() as u64,
        usage["completion_tokens"].as_u64().unwrap()
    );
    let tok = Tokenizer::load(&model_path()).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);

    // A penalty changes the greedy text of a repetitive prompt; a bad one is
    // refused, naming the field.
    let greedy = |penalty: f64| {
        let (got, v) = post(
            plain,
            "/v1/completions",
            json!({"prompt": "1 1 1 1 1 1 1 1 1 1 1 1", "max_tokens": 8, "temperature": 0,
                   "repetition_penalty": penalty}),
        );
        assert_eq!(got, 200, "{v}");
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    assert_ne!(greedy(1.0), greedy(3.0));
    for bad in [json!(0), json!(-1.0), json!("x")] {
        let (got, v) = post(
            plain,
            "/v1/completions",
            json!({"prompt": "Hi", "max_tokens": 1, "repetition_penalty": bad}),
        );
        assert_eq!(got, 400, "{bad}: {v}");
        assert!(v.to_string().contains("repetition_penalty"), "{v}");
    }
}
