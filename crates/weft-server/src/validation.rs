//! Raw OpenAI request JSON in, a typed valid request or a typed error out
//! (TGI's `validation.rs` split). The engine checks the sampling and length
//! rules itself (`weft_engine::validate`); this module checks the shape of
//! the JSON, the fields the engine does not know (`model`, `n`, `stream`,
//! `parallel`), and maps everything onto `RequestSpec`s.

use serde::Deserialize;
use serde_json::Value;
use weft_engine::{Prompt, ProtocolChoice, RequestSpec, Sampling};
use weft_model::chat::Message;

/// A request the HTTP layer refuses, with OpenAI's `param`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRequest {
    pub message: String,
    /// The field at fault.
    pub param: Option<String>,
    /// 400, or 404 for a model this server does not serve.
    pub status: u16,
}

impl InvalidRequest {
    pub fn new(param: &str, message: impl Into<String>) -> InvalidRequest {
        InvalidRequest {
            message: message.into(),
            param: Some(param.to_string()),
            status: 400,
        }
    }
}

/// Server-wide settings validation needs.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub served_model_name: String,
    /// `--protocol`: the protocol a request without `parallel` runs with.
    pub protocol: Option<String>,
    /// Let special-token text in message contents become control tokens.
    pub special_tokens_in_content: bool,
    /// `--protocol-option`: settings of `protocol` (requests that name
    /// another protocol do not get them).
    pub protocol_options: Vec<(String, String)>,
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// A valid request: one engine spec per choice (prompts x `n`), and how to
/// answer.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub endpoint: Endpoint,
    /// `choices[i]` is the spec of choice `i`.
    pub choices: Vec<RequestSpec>,
    /// Choices per prompt (`n`).
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// `stream_options.continuous_usage_stats`.
    pub continuous_usage: bool,
    /// Stream `weft.thread` events (protocol requests).
    pub include_threads: bool,
    /// Alternatives per token when log-probabilities were asked for.
    pub logprobs: Option<usize>,
    /// vLLM's `return_token_ids`: streamed chunks carry their token ids.
    pub return_token_ids: bool,
    /// Whether the requests run a protocol (responses carry `weft`).
    pub protocol: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    model: Option<String>,
    prompt: Option<Value>,
    messages: Option<Vec<RawMessage>>,
    #[serde(default, deserialize_with = "integer")]
    max_tokens: Option<i64>,
    #[serde(default, deserialize_with = "integer")]
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    #[serde(default, deserialize_with = "integer")]
    top_k: Option<i64>,
    min_p: Option<f64>,
    /// vLLM's extension (1 is off).
    repetition_penalty: Option<f64>,
    /// vLLM's extension: each streamed chunk carries its `token_ids`.
    return_token_ids: Option<bool>,
    #[serde(default, deserialize_with = "integer")]
    seed: Option<i64>,
    stop: Option<Value>,
    #[serde(default, deserialize_with = "integer")]
    n: Option<i64>,
    stream: Option<bool>,
    /// vLLM's extension: decode past end of sequence.
    ignore_eos: Option<bool>,
    /// vLLM's extension: token ids that end the request like EOS.
    stop_token_ids: Option<Vec<u32>>,
    /// vLLM's chat extensions, `transformers`' template flags: a final
    /// assistant message left open is an assistant prefill the model
    /// continues (a way to force a fork from chat).
    add_generation_prompt: Option<bool>,
    continue_final_message: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    /// Absent: the server's protocol; `null`: plain text; an object: these.
    #[serde(default, deserialize_with = "present")]
    parallel: Option<Value>,
}

/// An integer field that also takes a float with no fraction (`2.0`), as
/// pydantic's lax mode does for vLLM; `null` is absent.
fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                _ => Err(D::Error::custom(format!("expected an integer, got {n}"))),
            }
        }
    }
}

/// Keeps `"parallel": null` apart from a missing field.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    content: Option<Value>,
    /// Tool calls and their results: refused rather than dropped (weft
    /// does not pass them to chat templates yet).
    tool_calls: Option<Value>,
    tool_call_id: Option<Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
    /// vLLM's extension: every chunk carries `usage` with the running
    /// `completion_tokens` (here also `prompt_tokens_details`).
    continuous_usage_stats: Option<bool>,
    /// weft's extension: also stream the thread tree as `weft.thread`
    /// events. Off by default: the official `openai` Python client (3.57)
    /// does not skip named events, it yields them as chunks without
    /// `choices`.
    include_threads: Option<bool>,
}

#[derive(Deserialize)]
struct Parallel {
    protocol: Option<String>,
    #[serde(default, deserialize_with = "integer")]
    max_children: Option<i64>,
    #[serde(default, deserialize_with = "integer")]
    max_depth: Option<i64>,
    /// Tokens each child thread may generate (default: the request's
    /// `max_tokens`, else the engine's per-thread limit).
    #[serde(default, deserialize_with = "integer")]
    max_thread_tokens: Option<i64>,
    /// Tokens all threads together may generate.
    #[serde(default, deserialize_with = "integer")]
    max_total_tokens: Option<i64>,
    /// The protocol's own settings by their reference names
    /// (`weft_protocol::options`), e.g. `{"no_conclusion": false}`.
    options: Option<serde_json::Map<String, Value>>,
    /// `false`: re-prefill every join; `true` (the default for protocols
    /// that join by KV merge): merge the children's KV.
    kv_merge: Option<bool>,
}

/// What `parallel` asked for.
struct ParallelChoice {
    protocol: Option<String>,
    /// The protocol's settings (`key`, `value`), server defaults first.
    options: Vec<(String, String)>,
    limits: weft_engine::RequestLimits,
    kv_merge: bool,
    max_thread_tokens: Option<usize>,
}

/// OpenAI and vLLM fields that would change the result and that weft does
/// not implement, each with the values that mean "off". Such a field with
/// any other value is refused (400 naming it) rather than silently ignored;
/// fields that change nothing (`user`, `metadata`, `service_tier`, ...)
/// are ignored, as OpenAI-compatible servers do.
const UNSUPPORTED: &[(&str, &[&str])] = &[
    ("presence_penalty", &["0"]),
    ("frequency_penalty", &["0"]),
    ("logit_bias", &["{}"]),
    ("best_of", &["1"]),
    ("echo", &["false"]),
    ("suffix", &["\"\""]),
    ("tools", &["[]"]),
    ("tool_choice", &["\"none\"", "\"auto\""]),
    ("functions", &["[]"]),
    ("function_call", &["\"none\"", "\"auto\""]),
    ("response_format", &["{\"type\":\"text\"}"]),
    ("guided_json", &[]),
    ("guided_regex", &[]),
    ("guided_choice", &[]),
    ("guided_grammar", &[]),
    ("structured_outputs", &[]),
    ("prompt_logprobs", &["0"]),
    ("min_tokens", &["0"]),
    ("typical_p", &["1"]),
    ("bad_words", &["[]"]),
    ("allowed_token_ids", &[]),
    ("use_beam_search", &["false"]),
    ("length_penalty", &["1"]),
    ("include_stop_str_in_output", &["false"]),
    // weft's text keeps special tokens, as vLLM's `skip_special_tokens:
    // false` does.
    ("skip_special_tokens", &["false"]),
    ("spaces_between_special_tokens", &["true"]),
    ("truncate_prompt_tokens", &[]),
    ("return_tokens_as_token_ids", &["false"]),
    ("chat_template", &[]),
    ("chat_template_kwargs", &["{}"]),
    ("documents", &[]),
    ("audio", &[]),
    ("modalities", &["[\"text\"]"]),
    ("prediction", &[]),
    ("web_search_options", &[]),
];

/// Refuses a field from [`UNSUPPORTED`] set to anything but `null` or its
/// "off" value (numbers compare by value: `0`, `0.0` and `-0.0` are one).
fn unsupported(body: &Value) -> Result<(), InvalidRequest> {
    for (field, off) in UNSUPPORTED {
        let Some(v) = body.get(*field) else { continue };
        let is_off = |o: &&str| match (v.as_f64(), o.parse::<f64>()) {
            (Some(a), Ok(b)) => a == b,
            _ => serde_json::from_str::<Value>(o).is_ok_and(|o| *v == o),
        };
        if v.is_null() || off.iter().any(is_off) {
            continue;
        }
        return Err(InvalidRequest::new(
            field,
            format!("{field} is not supported by this server (weft); leave it out or null"),
        ));
    }
    Ok(())
}

/// Most choices one request may ask for.
pub const MAX_N: i64 = 16;

/// Checks a request body for `endpoint`. `seed_source` gives a seed to
/// requests without one.
pub fn validate(
    body: &[u8],
    endpoint: Endpoint,
    defaults: &Defaults,
    seed_source: &dyn Fn() -> u64,
) -> Result<ValidRequest, InvalidRequest> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| InvalidRequest::new("body", format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(InvalidRequest::new(
            "body",
            "the body must be a JSON object",
        ));
    }
    unsupported(&value)?;
    // The path of a field with the wrong type names it (`param`), as
    // vLLM's pydantic errors do.
    let raw: Raw = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." {
            "body".to_string()
        } else {
            path
        };
        InvalidRequest::new(&param, format!("{param}: {}", e.inner()))
    })?;
    if let Some(m) = &raw.model {
        if m != &defaults.served_model_name {
            return Err(InvalidRequest {
                message: format!(
                    "The model `{m}` does not exist (this server serves `{}`).",
                    defaults.served_model_name
                ),
                param: Some("model".into()),
                status: 404,
            });
        }
    }
    let logprobs = logprobs(endpoint, raw.logprobs.as_ref(), raw.top_logprobs.as_ref())?;
    let prompts = match endpoint {
        Endpoint::Completions => {
            if raw.messages.is_some() {
                return Err(InvalidRequest::new(
                    "messages",
                    "`messages` belongs to /v1/chat/completions; send `prompt` here",
                ));
            }
            completion_prompts(raw.prompt.as_ref())?
        }
        Endpoint::Chat => {
            if raw.prompt.is_some() {
                return Err(InvalidRequest::new(
                    "prompt",
                    "`prompt` belongs to /v1/completions; send `messages` here",
                ));
            }
            vec![chat_prompt(raw.messages.as_deref())?]
        }
    };
    let n = raw.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(InvalidRequest::new(
            "n",
            format!("n must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    let max_tokens = match (raw.max_completion_tokens.or(raw.max_tokens), endpoint) {
        (Some(m), _) if m < 1 => {
            return Err(InvalidRequest::new(
                "max_tokens",
                format!("max_tokens must be at least 1, got {m}"),
            ))
        }
        (Some(m), _) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        // The legacy completions endpoint defaults to 16 (OpenAI, vLLM).
        (None, Endpoint::Completions) => Some(16),
        (None, Endpoint::Chat) => None,
    };
    let stop = match &raw.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(String::from).ok_or_else(|| {
                    InvalidRequest::new("stop", "stop must be a string or a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(InvalidRequest::new(
                "stop",
                "stop must be a string or a list of strings",
            ))
        }
    };
    let ParallelChoice {
        protocol,
        options,
        limits,
        kv_merge,
        max_thread_tokens,
    } = parallel(raw.parallel.as_ref(), defaults)?;
    let seed = match raw.seed {
        Some(s) if s < 0 => {
            return Err(InvalidRequest::new(
                "seed",
                format!("seed must be >= 0, got {s}"),
            ))
        }
        Some(s) => s as u64,
        None => seed_source(),
    };
    let engine_protocol =
        match (&protocol, options.is_empty()) {
            (Some(name), false) => Some(ProtocolChoice::Instance(std::sync::Arc::from(
                weft_protocol::with_options(name, &options)
                    .map_err(|e| InvalidRequest::new("parallel.options", e.to_string()))?,
            ))),
            (Some(name), true) => Some(ProtocolChoice::Name(name.clone())),
            (None, false) => return Err(InvalidRequest::new(
                "parallel.options",
                "parallel.options needs a protocol (parallel.protocol or the server's --protocol)",
            )),
            (None, true) => None,
        };
    let continue_final_message = raw.continue_final_message.unwrap_or(false);
    let chat = weft_model::chat::ChatOptions {
        continue_final_message,
        add_generation_prompt: raw.add_generation_prompt.unwrap_or(!continue_final_message),
    };
    if chat.continue_final_message && chat.add_generation_prompt {
        return Err(InvalidRequest::new(
            "continue_final_message",
            "continue_final_message and add_generation_prompt cannot both be true",
        ));
    }
    let stream = raw.stream.unwrap_or(false);
    if raw.stream_options.is_some() && !stream {
        return Err(InvalidRequest::new(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    let mut choices = Vec::new();
    for prompt in prompts {
        for i in 0..n as u64 {
            let mut spec = RequestSpec::new(prompt.clone());
            spec.protocol = engine_protocol.clone();
            spec.sampling = Sampling {
                temperature: raw.temperature.unwrap_or(1.0) as f32,
                top_p: raw.top_p.unwrap_or(1.0) as f32,
                top_k: raw.top_k.unwrap_or(0),
                min_p: raw.min_p.unwrap_or(0.0) as f32,
                repetition_penalty: raw.repetition_penalty.unwrap_or(1.0) as f32,
                // Distinct and reproducible choices.
                seed: seed.wrapping_add(i),
            };
            spec.max_tokens = max_tokens;
            // A child may not run longer than the request's own budget:
            // `max_tokens` bounds every thread unless `parallel` says.
            spec.max_thread_tokens = max_thread_tokens.or(max_tokens);
            spec.stop = stop.clone();
            spec.limits = limits;
            spec.kv_merge = kv_merge;
            spec.chat = chat;
            spec.ignore_eos = raw.ignore_eos.unwrap_or(false);
            spec.stop_token_ids = raw.stop_token_ids.clone().unwrap_or_default();
            spec.logprobs = logprobs;
            spec.special_tokens_in_content = defaults.special_tokens_in_content;
            choices.push(spec);
        }
    }
    Ok(ValidRequest {
        endpoint,
        choices,
        n: n as usize,
        stream,
        include_usage: raw
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        logprobs,
        return_token_ids: raw.return_token_ids.unwrap_or(false),
        continuous_usage: raw
            .stream_options
            .as_ref()
            .and_then(|o| o.continuous_usage_stats)
            .unwrap_or(false),
        include_threads: raw
            .stream_options
            .as_ref()
            .and_then(|o| o.include_threads)
            .unwrap_or(false),
        protocol,
    })
}

/// `logprobs` as each endpoint spells it: an integer k on completions;
/// `logprobs: true` plus `top_logprobs: k` on chat.
fn logprobs(
    endpoint: Endpoint,
    logprobs: Option<&Value>,
    top: Option<&Value>,
) -> Result<Option<usize>, InvalidRequest> {
    let count = |v: &Value, field: &str| {
        v.as_u64()
            .map(|k| k as usize)
            .filter(|&k| k <= weft_engine::MAX_LOGPROBS)
            .ok_or_else(|| {
                InvalidRequest::new(
                    field,
                    format!(
                        "{field} must be an integer from 0 to {}",
                        weft_engine::MAX_LOGPROBS
                    ),
                )
            })
    };
    let top = top.filter(|v| !v.is_null());
    match endpoint {
        Endpoint::Completions => match logprobs {
            None | Some(Value::Null) => Ok(None),
            Some(v) => count(v, "logprobs").map(Some),
        },
        Endpoint::Chat => match (logprobs, top) {
            (None | Some(Value::Null) | Some(Value::Bool(false)), None) => Ok(None),
            (Some(Value::Bool(true)), None) => Ok(Some(0)),
            (Some(Value::Bool(true)), Some(t)) => count(t, "top_logprobs").map(Some),
            (_, Some(_)) => Err(InvalidRequest::new(
                "top_logprobs",
                "top_logprobs needs \"logprobs\": true",
            )),
            (Some(_), None) => Err(InvalidRequest::new(
                "logprobs",
                "logprobs must be true or false",
            )),
        },
    }
}

fn completion_prompts(prompt: Option<&Value>) -> Result<Vec<Prompt>, InvalidRequest> {
    let bad = || {
        InvalidRequest::new(
            "prompt",
            "prompt must be a string, a list of strings, a list of token ids, or a list of such lists",
        )
    };
    let ids = |items: &[Value]| -> Result<Vec<u32>, InvalidRequest> {
        items
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(bad)
            })
            .collect()
    };
    match prompt {
        None => Err(InvalidRequest::new("prompt", "prompt is required")),
        Some(Value::String(s)) => Ok(vec![Prompt::Text(s.clone())]),
        Some(Value::Array(items)) if items.is_empty() => {
            Err(InvalidRequest::new("prompt", "prompt is empty"))
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            Ok(vec![Prompt::Tokens(ids(items)?)])
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(Prompt::Text(s.clone())),
                Value::Array(inner) => Ok(Prompt::Tokens(ids(inner)?)),
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn chat_prompt(messages: Option<&[RawMessage]>) -> Result<Prompt, InvalidRequest> {
    let messages =
        messages.ok_or_else(|| InvalidRequest::new("messages", "messages is required"))?;
    if messages.is_empty() {
        return Err(InvalidRequest::new("messages", "messages is empty"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let content = match &m.content {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            // The list-of-parts form: text parts only, joined with "\n" as
            // vLLM joins them (`chat_utils.py`).
            Some(Value::Array(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                        _ => {
                            return Err(InvalidRequest::new(
                                "messages",
                                format!("message {i}: only text content parts are supported"),
                            ))
                        }
                    }
                }
                texts.join("\n")
            }
            Some(_) => {
                return Err(InvalidRequest::new(
                    "messages",
                    format!("message {i}: content must be a string or a list of parts"),
                ))
            }
        };
        let has = |v: &Option<Value>| !matches!(v, None | Some(Value::Null));
        if has(&m.tool_calls) || has(&m.tool_call_id) {
            return Err(InvalidRequest::new(
                "messages",
                format!(
                    "message {i}: tool calls (`tool_calls`, `tool_call_id`) are not supported: \
                     weft does not pass them to the chat template, and dropping them would \
                     change the prompt"
                ),
            ));
        }
        if !matches!(
            m.role.as_str(),
            "system" | "user" | "assistant" | "tool" | "developer"
        ) {
            return Err(InvalidRequest::new(
                "messages",
                format!(
                    "message {i}: unknown role `{}` (system, user, assistant, tool, developer)",
                    m.role
                ),
            ));
        }
        out.push(Message::new(m.role.clone(), content));
    }
    Ok(Prompt::Chat(out))
}

fn parallel(value: Option<&Value>, defaults: &Defaults) -> Result<ParallelChoice, InvalidRequest> {
    let mut choice = ParallelChoice {
        protocol: defaults.protocol.clone(),
        options: defaults.protocol_options.clone(),
        limits: weft_engine::RequestLimits::default(),
        kv_merge: true,
        max_thread_tokens: None,
    };
    let p: Parallel =
        match value {
            None => return Ok(choice),
            Some(Value::Null) => {
                choice.protocol = None;
                return Ok(choice);
            }
            Some(v) if !v.is_object() => return Err(InvalidRequest::new(
                "parallel",
                "parallel must be null or an object {protocol, max_children, max_depth, kv_merge}",
            )),
            Some(v) => serde_path_to_error::deserialize(v.clone()).map_err(|e| {
                let path = e.path().to_string();
                let param = if path == "." {
                    "parallel".to_string()
                } else {
                    format!("parallel.{path}")
                };
                InvalidRequest::new(
                    &param,
                    format!(
                        "{param}: {} (parallel is null or {{protocol, max_children, max_depth, \
                     max_thread_tokens, max_total_tokens, kv_merge, options}})",
                        e.inner()
                    ),
                )
            })?,
        };
    if let Some(name) = p.protocol {
        if choice.protocol.as_deref() != Some(name.as_str()) {
            choice.options.clear();
        }
        choice.protocol = Some(name);
    }
    for (k, v) in p.options.unwrap_or_default() {
        let v = match v {
            Value::String(s) => s,
            Value::Bool(_) | Value::Number(_) => v.to_string(),
            other => {
                return Err(InvalidRequest::new(
                    "parallel.options",
                    format!("option `{k}` must be a string, number or boolean, got {other}"),
                ))
            }
        };
        choice.options.push((k, v));
    }
    if let Some(name) = &choice.protocol {
        let Some(proto) = weft_protocol::by_name(name) else {
            return Err(InvalidRequest::new(
                "parallel.protocol",
                format!(
                    "unknown protocol `{name}` (apr, multiverse, threadweaver, npr, parallel-r1)"
                ),
            ));
        };
        if p.kv_merge == Some(true) && proto.rules().join_mode != weft_protocol::JoinMode::KvMerge {
            return Err(InvalidRequest::new(
                "parallel.kv_merge",
                format!(
                    "protocol `{name}` joins by re-prefilling the children's text; kv_merge \
                     is for protocols whose children share positions (multiverse, npr)"
                ),
            ));
        }
    }
    choice.kv_merge = p.kv_merge.unwrap_or(true);
    if let Some(c) = p.max_children {
        choice.limits.max_children = Some(usize::try_from(c).map_err(|_| {
            InvalidRequest::new("parallel.max_children", "max_children must be >= 0")
        })?);
    }
    let positive = |v: Option<i64>, field: &str| -> Result<Option<usize>, InvalidRequest> {
        match v {
            None => Ok(None),
            Some(n) if n >= 1 => Ok(Some(n as usize)),
            Some(n) => Err(InvalidRequest::new(
                &format!("parallel.{field}"),
                format!("{field} must be at least 1, got {n}"),
            )),
        }
    };
    choice.max_thread_tokens = positive(p.max_thread_tokens, "max_thread_tokens")?;
    choice.limits.max_total_tokens = positive(p.max_total_tokens, "max_total_tokens")?;
    if let Some(d) = p.max_depth {
        choice.limits.max_depth =
            Some(u32::try_from(d).map_err(|_| {
                InvalidRequest::new("parallel.max_depth", "max_depth must be >= 0")
            })?);
    }
    Ok(choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(messages: Value) -> Result<Vec<Message>, InvalidRequest> {
        let raw: Vec<RawMessage> = serde_json::from_value(messages).unwrap();
        match chat_prompt(Some(&raw))? {
            Prompt::Chat(m) => Ok(m),
            _ => unreachable!("chat_prompt builds chat prompts"),
        }
    }

    #[test]
    fn text_parts_join_with_newlines_as_vllm_joins_them() {
        let m = chat(serde_json::json!([{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}]))
        .unwrap();
        assert_eq!(m[0].content, "hi\nthere");
    }

    #[test]
    fn tool_calls_are_refused_not_dropped() {
        let e = chat(serde_json::json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]}
        ]))
        .unwrap_err();
        assert!(e.message.contains("tool_calls"), "{}", e.message);
        let e = chat(serde_json::json!([
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
        ]))
        .unwrap_err();
        assert!(e.message.contains("tool_call_id"), "{}", e.message);
        // Null or absent is fine.
        chat(serde_json::json!([{"role": "assistant", "content": "x", "tool_calls": null}]))
            .unwrap();
    }
}
