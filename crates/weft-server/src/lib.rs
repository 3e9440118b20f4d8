//! `weft-server`: an OpenAI-compatible HTTP server over the weft engine.
//!
//! The split follows TGI's router:
//! - [`validation`]: raw request JSON in, a typed valid request (one
//!   `RequestSpec` per choice) or a typed error naming the field out;
//! - [`engine_thread`]: the engine on its own OS thread behind a channel
//!   (the model never blocks the async runtime); each request's events come
//!   back on a channel of its own, and a dropped receiver (a client that
//!   disconnected) aborts the request and frees its KV;
//! - this module: HTTP only (axum routes, SSE streaming, error mapping).
//!
//! Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (both whole and streamed, `n` choices,
//! `stream_options.include_usage`), with vLLM's extension fields `top_k`,
//! `min_p`, `repetition_penalty`, `ignore_eos`, `return_token_ids` (the
//! token ids of each streamed chunk; the whole response does not carry
//! them), `stream_options.continuous_usage_stats` (`usage` on every chunk,
//! with the root's running `completion_tokens` and the prompt's
//! `cached_tokens`) and `parallel` (`{protocol, max_children,
//! max_depth, max_thread_tokens, max_total_tokens, kv_merge}`, or `null`
//! for plain text). `max_tokens` bounds the root and, unless
//! `parallel.max_thread_tokens` says otherwise, each child thread;
//! `usage.completion_tokens` counts every thread's tokens (what was
//! computed), so a forking request's may exceed `max_tokens`. Protocol responses carry
//! `weft: {threads, stats}`; a streamed protocol request carries the root's
//! visible text (its tokens and what its joins append) in standard chunks,
//! and with `stream_options.include_threads` the tree as SSE events named
//! `weft.thread` (start, delta, fork, join, done).
//!
//! `GET /metrics` gives Prometheus text ([`metrics`]). `GET /` is the live
//! thread-tree page, fed by the SSE stream `GET /weft/tree` ([`monitor`]).
//!
//! Log-probabilities come in each endpoint's shape (`logprobs: k` on
//! completions; `logprobs: true, top_logprobs: k` on chat).
//!

pub mod engine_thread;
pub mod metrics;
pub mod monitor;
pub mod openai;
pub mod validation;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use weft_engine::{Event, Response};

pub use engine_thread::{EngineHandle, SubmitError};
use validation::{Defaults, Endpoint, InvalidRequest, ValidRequest};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name `/v1/models` lists and requests must use.
    pub served_model_name: String,
    /// The protocol of requests that do not say (`--protocol`).
    pub protocol: Option<String>,
    /// Requests to `/v1/*` must send `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Special-token text inside chat message contents becomes control
    /// tokens (off: it stays text; see `Tokenizer::encode_chat`).
    pub special_tokens_in_content: bool,
    /// `--protocol-option`: settings of `protocol` (`weft_protocol::options`).
    pub protocol_options: Vec<(String, String)>,
}

struct AppState {
    engine: EngineHandle,
    cfg: ServerConfig,
    next: AtomicU64,
    /// Start time (ns since the epoch), for response ids.
    started: u64,
}

type Shared = Arc<AppState>;

/// The routes, over a running engine thread.
pub fn router(engine: EngineHandle, cfg: ServerConfig) -> Router {
    metrics::handle();
    let state = Arc::new(AppState {
        engine,
        cfg,
        next: AtomicU64::new(0),
        started: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    });
    Router::new()
        .route("/", get(page))
        .route("/weft/tree", get(tree_feed))
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/metrics", get(|| async { metrics::handle().render() }))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model_info))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(|| async { error_response(404, "no such path", None) })
        .method_not_allowed_fallback(|| async {
            error_response(405, "this path does not take that method", None)
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves `router` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

/// Binds `addr` and serves on a runtime of its own, on a background
/// thread (for tests and embedding). Returns the bound address.
pub fn spawn(
    engine: EngineHandle,
    cfg: ServerConfig,
    addr: SocketAddr,
) -> std::io::Result<SocketAddr> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
    let bound = listener.local_addr()?;
    let app = router(engine, cfg);
    std::thread::Builder::new()
        .name("weft-http".into())
        .spawn(move || {
            if let Err(e) = runtime.block_on(serve(listener, app)) {
                tracing::error!("server stopped: {e}");
            }
        })?;
    Ok(bound)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn error_response(status: u16, message: &str, param: Option<&str>) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(openai::error(status, message, param))).into_response()
}

fn invalid(e: InvalidRequest) -> HttpResponse {
    error_response(e.status, &e.message, e.param.as_deref())
}

/// Checks `Authorization: Bearer <key>` when the server has a key; the
/// refusal to send otherwise.
fn unauthorized(state: &AppState, headers: &HeaderMap) -> Option<HttpResponse> {
    let key = state.cfg.api_key.as_ref()?;
    let sent = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    (sent != Some(key.as_str())).then(|| error_response(401, "a valid API key is required", None))
}

/// The thread-tree page: one HTML file with its CSS and JS, built into
/// the binary. It reads `/weft/tree` (passing on `?api_key=` from its own
/// address when the server has a key).
async fn page() -> HttpResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("page.html"),
    )
        .into_response()
}

/// The page's feed: a `snapshot` event, then every tree event as it
/// happens ([`monitor`]). A page that falls behind gets `resync` and
/// reconnects. With `--api-key` it needs the key, as a bearer token or as
/// `?api_key=` (an `EventSource` cannot send headers).
async fn tree_feed(
    State(state): State<Shared>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> HttpResponse {
    if let Some(key) = &state.cfg.api_key {
        let in_query = query.get("api_key") == Some(key);
        if !in_query {
            if let Some(refusal) = unauthorized(&state, &headers) {
                return refusal;
            }
        }
    }
    let (snapshot, rx) = state.engine.monitor.subscribe();
    let first = stream::once(async move {
        Ok::<_, std::convert::Infallible>(SseEvent::default().event("snapshot").data(snapshot))
    });
    let live = tokio_stream::wrappers::BroadcastStream::new(rx).map(|m| {
        Ok(match m {
            Ok(data) => SseEvent::default().event("tree").data(data),
            Err(_) => SseEvent::default().event("resync").data("{}"),
        })
    });
    Sse::new(first.chain(live))
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response()
}

async fn models(State(state): State<Shared>, headers: HeaderMap) -> HttpResponse {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.cfg.served_model_name,
            "object": "model",
            "created": now_secs(),
            "owned_by": "weft",
            "max_model_len": state.engine.max_model_len,
        }],
    }))
    .into_response()
}

async fn model_info(
    State(state): State<Shared>,
    headers: HeaderMap,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> HttpResponse {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
    if name != state.cfg.served_model_name {
        return error_response(
            404,
            &format!("The model `{name}` does not exist."),
            Some("model"),
        );
    }
    Json(json!({
        "id": state.cfg.served_model_name,
        "object": "model",
        "created": now_secs(),
        "owned_by": "weft",
        "max_model_len": state.engine.max_model_len,
    }))
    .into_response()
}

/// The largest request body taken (bytes); a larger one is refused with
/// 413 in OpenAI's error shape.
pub const MAX_BODY_BYTES: usize = 16 << 20;

type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

async fn completions(State(state): State<Shared>, headers: HeaderMap, body: Body) -> HttpResponse {
    handle(state, headers, body, Endpoint::Completions).await
}

async fn chat_completions(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> HttpResponse {
    handle(state, headers, body, Endpoint::Chat).await
}

async fn handle(state: Shared, headers: HeaderMap, body: Body, endpoint: Endpoint) -> HttpResponse {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let message = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the request body is over the server's limit of {MAX_BODY_BYTES} bytes")
            } else {
                format!("cannot read the request body: {}", e.body_text())
            };
            return error_response(e.status().as_u16(), &message, Some("body"));
        }
    };
    let defaults = Defaults {
        served_model_name: state.cfg.served_model_name.clone(),
        protocol: state.cfg.protocol.clone(),
        special_tokens_in_content: state.cfg.special_tokens_in_content,
        protocol_options: state.cfg.protocol_options.clone(),
    };
    let seeds = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    };
    let valid = match validation::validate(&body, endpoint, &defaults, &seeds) {
        Ok(v) => v,
        Err(e) => return invalid(e),
    };
    // Unique across restarts: the server's start time, then a counter.
    let n = state.next.fetch_add(1, Ordering::Relaxed);
    let id = match endpoint {
        Endpoint::Completions => format!("cmpl-{:x}-{n}", state.started),
        Endpoint::Chat => format!("chatcmpl-{:x}-{n}", state.started),
    };
    // Every choice starts (and is validated by the engine) before any
    // answer is sent: a bad choice fails the whole request.
    let mut receivers = Vec::with_capacity(valid.choices.len());
    for (i, spec) in valid.choices.clone().into_iter().enumerate() {
        match state.engine.submit(spec, format!("{id}/{i}")).await {
            Ok((_, rx)) => receivers.push(rx),
            Err(SubmitError::Invalid(v)) => {
                return error_response(400, &v.to_string(), Some(v.field()))
            }
            Err(SubmitError::EngineGone) => {
                return error_response(500, "the engine is not running", None)
            }
            Err(e @ SubmitError::Busy(_)) => {
                let mut r = error_response(503, &e.to_string(), None);
                r.headers_mut()
                    .insert("retry-after", axum::http::HeaderValue::from_static("1"));
                return r;
            }
        }
    }
    let model = state.cfg.served_model_name.clone();
    if valid.stream {
        return stream_response(valid, receivers, id, model).into_response();
    }
    let mut responses = Vec::with_capacity(receivers.len());
    let mut token_logprobs = Vec::with_capacity(receivers.len());
    for mut rx in receivers {
        let mut done = None;
        let mut lps = Vec::new();
        while let Some(e) = rx.recv().await {
            match e {
                Event::Text {
                    thread: 0,
                    logprobs: Some(lp),
                    ..
                } => lps.push(lp),
                Event::Finished { response, .. } => {
                    done = Some(*response);
                    break;
                }
                _ => {}
            }
        }
        match done {
            Some(r) if r.finish_reason == weft_engine::FinishReason::Error => {
                return error_response(500, &engine_error_message(&r), None)
            }
            Some(r) => responses.push(r),
            None => return error_response(500, "the engine dropped the request", None),
        }
        token_logprobs.push(lps);
    }
    Json(openai::response(
        endpoint,
        &id,
        now_secs(),
        &model,
        &responses,
        valid.n,
        valid.protocol.as_deref(),
        valid.logprobs.map(|_| token_logprobs.as_slice()),
    ))
    .into_response()
}

/// Server-sent events: each choice's root text as it is decoded, its
/// finish reason, optionally the usage, then `[DONE]`. Dropping the stream
/// (the client went away) drops the receivers, which aborts the requests.
fn stream_response(
    valid: ValidRequest,
    receivers: Vec<tokio::sync::mpsc::UnboundedReceiver<Event>>,
    id: String,
    model: String,
) -> Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let endpoint = valid.endpoint;
    let created = now_secs();
    let n = receivers.len();
    let tagged = receivers.into_iter().enumerate().map(|(i, rx)| {
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |e| (i, e))
    });
    let merged = stream::select_all(tagged);
    let state = Arc::new(std::sync::Mutex::new(StreamState {
        started: vec![false; n],
        finished: vec![None; n],
        offset: vec![0; n],
        prompt: vec![None; n],
        generated: vec![0; n],
    }));
    let (id2, model2, st2) = (id.clone(), model.clone(), state.clone());
    let (id, model) = (id.clone(), model.clone());
    let threads = valid.include_threads && valid.protocol.is_some();
    let return_token_ids = valid.return_token_ids;
    let continuous_usage = valid.continuous_usage;
    let tree_event = move |i: usize, e: &Event| if threads { tree_event(i, e) } else { None };
    let body = merged.flat_map(move |(i, e)| {
        let mut out: Vec<Result<SseEvent, std::convert::Infallible>> = Vec::new();
        let Ok(mut st) = state.lock() else {
            return stream::iter(out);
        };
        let mut chunk = |st: &mut StreamState,
                         text: Option<&str>,
                         finish,
                         lp: Option<&weft_engine::TokenLogprobs>,
                         ids: Option<&[u32]>| {
            let first = !st.started[i];
            st.started[i] = true;
            let mut v = openai::chunk(endpoint, &id, created, &model, i, text, first, finish);
            if let Some(ids) = ids {
                v["choices"][0]["token_ids"] = json!(ids);
            }
            if let (true, Some((prompt, cached))) = (continuous_usage, st.prompt[i]) {
                let done = st.generated[i];
                v["usage"] = json!({
                    "prompt_tokens": prompt,
                    "completion_tokens": done,
                    "total_tokens": prompt + done,
                    "prompt_tokens_details": {"cached_tokens": cached},
                });
            }
            if let Some(lp) = lp {
                v["choices"][0]["logprobs"] =
                    openai::logprobs(endpoint, std::slice::from_ref(lp), st.offset[i]);
                st.offset[i] += lp.token.len();
            }
            out.push(Ok(SseEvent::default().data(v.to_string())));
        };
        match &e {
            Event::Prompt {
                prompt_tokens,
                cached_tokens,
                ..
            } => st.prompt[i] = Some((*prompt_tokens, *cached_tokens)),
            Event::Text {
                thread: 0,
                token_ids,
                ..
            } => st.generated[i] += token_ids.len(),
            _ => {}
        }
        match &e {
            // The root's visible text: what it decodes, and what its joins
            // append (after the join's own thread event).
            // (Tokens whose text is held back, as the start of a possible
            // stop string, still go out when their ids were asked for.)
            Event::Text {
                thread: 0,
                text,
                logprobs,
                token_ids,
                ..
            } if !text.is_empty()
                || logprobs.is_some()
                || (return_token_ids && !token_ids.is_empty()) =>
            {
                let ids = return_token_ids.then_some(token_ids.as_slice());
                chunk(&mut st, Some(text), None, logprobs.as_ref(), ids)
            }
            Event::Joined {
                thread: 0,
                appended: Some(text),
                ..
            } => {
                if let Some(ev) = tree_event(i, &e) {
                    out.push(Ok(ev));
                }
                let mut chunk = |st: &mut StreamState, text: Option<&str>| {
                    let first = !st.started[i];
                    st.started[i] = true;
                    let v = openai::chunk(endpoint, &id, created, &model, i, text, first, None);
                    out.push(Ok(SseEvent::default().data(v.to_string())));
                };
                if !text.is_empty() {
                    chunk(&mut st, Some(text));
                }
            }
            // The engine gave up on the request: headers are sent, so the
            // error goes out as a data frame (vLLM's way), then `[DONE]`.
            Event::Finished {
                reason: weft_engine::FinishReason::Error,
                response,
                ..
            } => {
                st.finished[i] = Some((**response).clone());
                out.push(Ok(error_frame(&engine_error_message(response))));
            }
            Event::Finished {
                reason, response, ..
            } => {
                st.finished[i] = Some((**response).clone());
                chunk(&mut st, None, Some(*reason), None, None);
            }
            other => {
                if let Some(ev) = tree_event(i, other) {
                    out.push(Ok(ev));
                }
            }
        }
        stream::iter(out)
    });
    let include_usage = valid.include_usage;
    let per_prompt = valid.n;
    let tail = stream::once(async move {
        let Ok(st) = st2.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // A choice whose events ended without `Finished`: the engine
        // dropped it (it failed a step). Say so, in the stream.
        for (i, f) in st.finished.iter().enumerate() {
            if f.is_none() {
                out.push(Ok(error_frame(&format!(
                    "choice {i}: the engine stopped this request before it finished"
                ))));
            }
        }
        if include_usage {
            let done: Vec<Response> = st.finished.iter().flatten().cloned().collect();
            let usage = openai::usage(&done, per_prompt);
            out.push(Ok(SseEvent::default().data(
                openai::usage_chunk(endpoint, &id2, created, &model2, usage).to_string(),
            )));
        }
        out
    })
    .flat_map(stream::iter);
    let done = stream::once(async { Ok(SseEvent::default().data("[DONE]")) });
    // Comment frames while nothing else goes out (a forked root is silent
    // until its join), so clients and proxies do not time the stream out.
    Sse::new(body.chain(tail).chain(done)).keep_alive(
        axum::response::sse::KeepAlive::new().interval(std::time::Duration::from_secs(5)),
    )
}

/// An error after the response's headers went out: a data frame in
/// OpenAI's error shape (status 500), as vLLM sends one.
fn error_frame(message: &str) -> SseEvent {
    SseEvent::default().data(openai::error(500, message, None).to_string())
}

/// Why the engine ended a request with `FinishReason::Error` (the last
/// reason it recorded).
fn engine_error_message(r: &Response) -> String {
    let why = r
        .stats
        .refused_forks
        .last()
        .map_or("unknown", String::as_str);
    format!("the engine could not finish the request: {why}")
}

/// A tree event of choice `index` as an SSE event named `weft.thread`
/// (the thread-tree page's JSON, [`monitor::tree_json`], with `index`).
fn tree_event(index: usize, e: &Event) -> Option<SseEvent> {
    if matches!(e, Event::Finished { .. }) {
        return None;
    }
    let mut v = monitor::tree_json(e)?;
    v["index"] = json!(index);
    Some(SseEvent::default().event("weft.thread").data(v.to_string()))
}

struct StreamState {
    started: Vec<bool>,
    /// Each choice's response, by index.
    finished: Vec<Option<Response>>,
    /// Each choice's text offset so far (for `text_offset`).
    offset: Vec<usize>,
    /// Each choice's prompt and cached prompt tokens, once scheduled.
    prompt: Vec<Option<(usize, usize)>>,
    /// Each choice's root tokens so far (the running
    /// `usage.completion_tokens` of `continuous_usage_stats`).
    generated: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use serde_json::Value;
    use weft_engine::{FinishReason, RequestId, RequestStats};

    fn streamed(events: Vec<Event>) -> Vec<String> {
        let defaults = Defaults {
            served_model_name: "m".into(),
            protocol: None,
            special_tokens_in_content: false,
            protocol_options: Vec::new(),
        };
        let body = br#"{"prompt": "x", "stream": true, "stream_options": {"include_usage": true}}"#;
        let valid = validation::validate(body, Endpoint::Completions, &defaults, &|| 1).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for e in events {
            tx.send(e).unwrap();
        }
        drop(tx);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(async {
                let resp =
                    stream_response(valid, vec![rx], "cmpl-1".into(), "m".into()).into_response();
                assert_eq!(resp.status(), StatusCode::OK);
                axum::body::to_bytes(resp.into_body(), usize::MAX).await
            })
            .unwrap();
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").map(String::from))
            .collect()
    }

    fn text(t: &str) -> Event {
        Event::Text {
            request: RequestId(0),
            thread: 0,
            depth: 0,
            text: t.into(),
            token_ids: vec![1],
            logprobs: None,
        }
    }

    fn finished(reason: FinishReason, why: Option<&str>) -> Event {
        let mut stats = RequestStats::default();
        stats.refused_forks.extend(why.map(String::from));
        Event::Finished {
            request: RequestId(0),
            reason,
            response: Box::new(Response {
                id: RequestId(0),
                text: "Hi".into(),
                finish_reason: reason,
                prompt_tokens: 1,
                threads: Vec::new(),
                stats,
            }),
        }
    }

    fn errors(frames: &[String]) -> Vec<Value> {
        frames
            .iter()
            .filter_map(|f| serde_json::from_str::<Value>(f).ok())
            .filter(|v| v.get("error").is_some())
            .collect()
    }

    #[test]
    fn a_request_the_engine_drops_mid_stream_ends_with_an_error_frame_then_done() {
        let frames = streamed(vec![text("Hi")]);
        assert_eq!(
            frames.last().map(String::as_str),
            Some("[DONE]"),
            "{frames:?}"
        );
        let errs = errors(&frames);
        assert_eq!(errs.len(), 1, "{frames:?}");
        assert_eq!(errs[0]["error"]["code"], 500);
        assert!(errs[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stopped"));
        // The text sent before the failure stays sent.
        assert!(frames[0].contains("\"Hi\""), "{frames:?}");
    }

    #[test]
    fn an_engine_error_finish_is_an_error_frame_not_a_finish_reason() {
        let frames = streamed(vec![
            text("Hi"),
            finished(FinishReason::Error, Some("stuck")),
        ]);
        let errs = errors(&frames);
        assert_eq!(errs.len(), 1, "{frames:?}");
        assert!(errs[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stuck"));
        assert!(!frames
            .iter()
            .any(|f| f.contains("\"finish_reason\":\"error\"")));
        assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
    }

    #[test]
    fn a_normal_stream_has_no_error_frame() {
        let frames = streamed(vec![text("Hi"), finished(FinishReason::Stop, None)]);
        assert!(errors(&frames).is_empty(), "{frames:?}");
        assert!(frames
            .iter()
            .any(|f| f.contains("\"finish_reason\":\"stop\"")));
        assert!(frames.iter().any(|f| f.contains("\"usage\"")), "{frames:?}");
    }
}
