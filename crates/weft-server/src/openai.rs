//! The OpenAI response objects, as vLLM serves them: completions, chat
//! completions, their streamed chunks, usage, models and errors.

use serde_json::{json, Value};
use weft_engine::{FinishReason, Response, TokenLogprobs};

use crate::validation::Endpoint;

/// `finish_reason` as OpenAI names it.
pub fn finish_reason(r: FinishReason) -> &'static str {
    r.as_str()
}

/// `usage`: prompt tokens (each prompt once, however many of the `n`
/// choices per prompt ran it, as OpenAI counts), completion tokens (every
/// thread of every choice: what the server computed), and
/// `prompt_tokens_details.cached_tokens`: the prompt tokens taken from the
/// prefix cache (vLLM's field, with `--enable-prompt-tokens-details`).
pub fn usage(responses: &[Response], n: usize) -> Value {
    let prompt: usize = responses
        .iter()
        .step_by(n.max(1))
        .map(|r| r.prompt_tokens)
        .sum();
    let cached: usize = responses
        .iter()
        .step_by(n.max(1))
        .map(|r| r.stats.prompt_cached_tokens)
        .sum();
    let completion: usize = responses.iter().map(|r| r.stats.total_tokens).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// The `weft` extension of a protocol response: its thread tree and stats,
/// in the trace JSON's shape.
pub fn weft_extension(protocol: &str, r: &Response) -> Value {
    json!({
        "protocol": protocol,
        "threads": r.threads,
        "stats": r.stats,
    })
}

/// A whole (non-streamed) response.
#[allow(clippy::too_many_arguments)] // the fields of one OpenAI object
pub fn response(
    endpoint: Endpoint,
    id: &str,
    created: u64,
    model: &str,
    responses: &[Response],
    n: usize,
    protocol: Option<&str>,
    token_logprobs: Option<&[Vec<TokenLogprobs>]>,
) -> Value {
    let choices: Vec<Value> = responses
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut c = match endpoint {
                Endpoint::Completions => json!({
                    "index": i,
                    "text": r.text,
                    "logprobs": null,
                    "finish_reason": finish_reason(r.finish_reason),
                    "stop_reason": null,
                }),
                Endpoint::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": r.text},
                    "logprobs": null,
                    "finish_reason": finish_reason(r.finish_reason),
                    "stop_reason": null,
                }),
            };
            if let Some(p) = protocol {
                c["weft"] = weft_extension(p, r);
            }
            if let Some(lps) = token_logprobs.and_then(|all| all.get(i)) {
                c["logprobs"] = logprobs(endpoint, lps, 0);
            }
            c
        })
        .collect();
    json!({
        "id": id,
        "object": match endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion",
        },
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(responses, n),
    })
}

/// One streamed chunk of choice `index`: new text, and the finish reason on
/// its last chunk. Chat chunks open with the assistant's role.
#[allow(clippy::too_many_arguments)]
pub fn chunk(
    endpoint: Endpoint,
    id: &str,
    created: u64,
    model: &str,
    index: usize,
    text: Option<&str>,
    first: bool,
    finish: Option<FinishReason>,
) -> Value {
    let finish = finish.map(finish_reason);
    match endpoint {
        Endpoint::Completions => json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": index,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
                "stop_reason": null,
            }],
        }),
        Endpoint::Chat => {
            let mut delta = json!({});
            if first {
                delta["role"] = "assistant".into();
            }
            if let Some(t) = text {
                delta["content"] = t.into();
            }
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{
                    "index": index,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": finish,
                }],
            })
        }
    }
}

/// The last chunk when `stream_options.include_usage` is set: no choices.
pub fn usage_chunk(endpoint: Endpoint, id: &str, created: u64, model: &str, usage: Value) -> Value {
    json!({
        "id": id,
        "object": match endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion.chunk",
        },
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    })
}

/// OpenAI's error body.
pub fn error(status: u16, message: &str, param: Option<&str>) -> Value {
    let kind = match status {
        401 => "authentication_error",
        404 => "not_found_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    json!({
        "error": {"message": message, "type": kind, "param": param, "code": status},
    })
}

/// A choice's `logprobs` object: the legacy completions shape (`tokens`,
/// `token_logprobs`, `top_logprobs`, `text_offset`, offsets counted from
/// `offset`) or the chat shape (`content: [{token, logprob, bytes,
/// top_logprobs}]`).
pub fn logprobs(endpoint: Endpoint, lps: &[TokenLogprobs], offset: usize) -> Value {
    match endpoint {
        Endpoint::Completions => {
            let mut at = offset;
            let mut offsets = Vec::with_capacity(lps.len());
            for lp in lps {
                offsets.push(at);
                at += lp.token.len();
            }
            json!({
                "tokens": lps.iter().map(|l| &l.token).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|l| {
                    let mut m = serde_json::Map::new();
                    for (_, t, p) in &l.top {
                        m.entry(t.clone()).or_insert(json!(p));
                    }
                    Value::Object(m)
                }).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
        Endpoint::Chat => json!({
            "content": lps.iter().map(|l| json!({
                "token": l.token,
                "logprob": l.logprob,
                "bytes": l.token.as_bytes(),
                "top_logprobs": l.top.iter().map(|(_, t, p)| json!({
                    "token": t, "logprob": p, "bytes": t.as_bytes(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
    }
}
