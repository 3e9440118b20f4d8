//! One streamed `/v1/completions` request and the chunks that come back, as
//! vLLM, SGLang, llama-server and `weft serve` stream them (OpenAI's
//! completions API with `stream: true`).

use serde::Serialize;
use serde_json::Value;

use crate::RemoteError;

/// The body of one streamed completion. Only fields every OpenAI-compatible
/// server accepts are sent; `None` fields are left out (the server's
/// default applies).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CompletionRequest {
    /// The served model's id. Empty: each backend's own id (its
    /// `GET /v1/models`), so replicas that name the model differently
    /// serve alike.
    pub model: String,
    /// The thread's whole text: remote servers keep no state between
    /// requests, their prefix cache makes the repeated prefix cheap.
    pub prompt: String,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop strings (at most the 4 OpenAI allows are sent by callers; the
    /// protocol's triggers are detected on the streamed text instead).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Decode past end of sequence (vLLM's, llama-server's and `weft
    /// serve`'s `ignore_eos` extension); sent only when set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
}

impl CompletionRequest {
    /// A request for `prompt`, up to `max_tokens` new tokens, greedy.
    pub fn greedy(prompt: impl Into<String>, max_tokens: u32) -> Self {
        CompletionRequest {
            model: String::new(),
            prompt: prompt.into(),
            max_tokens,
            temperature: Some(0.0),
            top_p: None,
            seed: None,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }

    /// The JSON body: this request plus `stream: true` and
    /// `stream_options.include_usage` (so the last chunk carries `usage`).
    pub(crate) fn body(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("stream".into(), Value::Bool(true));
            m.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
        }
        v
    }
}

/// Token counts of one request, as the server reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// `usage.prompt_tokens`.
    pub prompt_tokens: u64,
    /// `usage.completion_tokens`.
    pub completion_tokens: u64,
    /// Prompt tokens the server took from its prefix cache instead of
    /// computing: vLLM's `usage.prompt_tokens_details.cached_tokens` (with
    /// `--enable-prompt-tokens-details`), llama-server's `timings.cache_n`
    /// (or the same `usage` field). `None` where the server does not say.
    pub cached_tokens: Option<u64>,
}

/// One parsed stream event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// New text of choice 0 (empty in a usage-only chunk).
    pub text: String,
    /// `finish_reason` when the server ended the choice (`stop`, `length`,
    /// `abort`, ...).
    pub finish_reason: Option<String>,
    /// Present on the chunk that carries `usage` (the last, usually).
    pub usage: Option<Usage>,
}

/// Parses one event's data. `Ok(None)` for the `[DONE]` sentinel.
///
/// Errors: data that is not JSON, or an error object (vLLM and llama-server
/// stream `{"error": {...}}` when a request fails after the headers).
pub fn parse_chunk(url: &str, data: &str) -> Result<Option<Chunk>, RemoteError> {
    if data.trim() == "[DONE]" {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(data).map_err(|e| RemoteError::Protocol {
        url: url.to_string(),
        message: format!("a stream event is not JSON ({e}): {}", clip(data)),
    })?;
    if let Some(err) = v.get("error") {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Err(RemoteError::Server {
            url: url.to_string(),
            message,
        });
    }
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    let text = choice
        .and_then(|c| c.get("text"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let finish_reason = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let usage = v.get("usage").filter(|u| u.is_object()).map(|u| {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        let cached = u
            .pointer("/prompt_tokens_details/cached_tokens")
            .and_then(Value::as_u64)
            .or_else(|| v.pointer("/timings/cache_n").and_then(Value::as_u64));
        Usage {
            prompt_tokens: n("prompt_tokens"),
            completion_tokens: n("completion_tokens"),
            cached_tokens: cached,
        }
    });
    Ok(Some(Chunk {
        text,
        finish_reason,
        usage,
    }))
}

/// The first 200 characters of `s`, for error messages.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_chunks_and_usage() {
        let c = parse_chunk("u", r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" Hi","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}"#).unwrap().unwrap();
        assert_eq!(
            (c.text.as_str(), c.finish_reason, c.usage),
            (" Hi", None, None)
        );
        let c = parse_chunk("u", r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"total_tokens":21,"completion_tokens":16,"prompt_tokens_details":{"cached_tokens":4}}}"#).unwrap().unwrap();
        assert_eq!(c.text, "");
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 16,
                cached_tokens: Some(4)
            })
        );
        assert_eq!(parse_chunk("u", "[DONE]").unwrap(), None);
    }

    #[test]
    fn llama_server_final_chunk_with_timings() {
        // tools/server/server-task.cpp, `to_json_oaicompat` (streamed).
        let c = parse_chunk("u", r#"{"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"created":1,"model":"m","system_fingerprint":"b1","object":"text_completion","usage":{"completion_tokens":8,"prompt_tokens":30,"total_tokens":38},"id":"c","timings":{"cache_n":24,"prompt_n":6,"prompt_ms":1.0,"predicted_n":8}}"#).unwrap().unwrap();
        assert_eq!(c.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt_tokens: 30,
                completion_tokens: 8,
                cached_tokens: Some(24)
            })
        );
    }

    #[test]
    fn errors_in_the_stream_and_bad_json() {
        let e = parse_chunk(
            "http://x",
            r#"{"error":{"message":"boom","type":"server_error","code":500}}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("boom") && e.to_string().contains("http://x"),
            "{e}"
        );
        let e = parse_chunk("http://x", "{not json").unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
    }

    #[test]
    fn body_streams_with_usage_and_leaves_defaults_out() {
        let b = CompletionRequest::greedy("Hi", 4).body();
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["temperature"], 0.0);
        assert!(b.get("seed").is_none() && b.get("stop").is_none() && b.get("top_p").is_none());
        assert!(b.get("ignore_eos").is_none());
        let b = CompletionRequest {
            ignore_eos: true,
            ..CompletionRequest::greedy("Hi", 4)
        }
        .body();
        assert_eq!(b["ignore_eos"], true);
    }
}
