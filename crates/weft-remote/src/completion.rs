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
    /// A repetition penalty (> 1 penalizes): sent under both names in use,
    /// `repetition_penalty` (vLLM, SGLang, `weft serve`: over the prompt
    /// and the output) and `repeat_penalty` (llama-server: over the last
    /// `repeat_last_n` = 64 tokens); each server ignores the other's.
    #[serde(skip)]
    pub repetition_penalty: Option<f32>,
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
            repetition_penalty: None,
        }
    }

    /// The JSON body: this request plus `stream: true` and the fields that
    /// make servers report their own token counts as they stream (each
    /// server ignores the others'):
    /// - `stream_options.include_usage` (OpenAI: the last chunk carries
    ///   `usage`) and `continuous_usage_stats` (vLLM, SGLang: every chunk
    ///   does, with the running `completion_tokens`);
    /// - `return_token_ids` (vLLM ≥ 0.10.2, `weft serve`: each chunk's
    ///   `choices[0].token_ids`);
    /// - `timings_per_token` (llama-server: every chunk carries `timings`,
    ///   with `prompt_n`, `cache_n` and `predicted_n`);
    /// - `parallel: null` (`weft serve`: plain text, even when that server
    ///   was started with a protocol; the trees are run here).
    pub(crate) fn body(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("stream".into(), Value::Bool(true));
            m.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true, "continuous_usage_stats": true}),
            );
            m.insert("return_token_ids".into(), Value::Bool(true));
            m.insert("timings_per_token".into(), Value::Bool(true));
            m.insert("parallel".into(), Value::Null);
            if let Some(p) = self.repetition_penalty {
                m.insert("repetition_penalty".into(), serde_json::json!(p));
                m.insert("repeat_penalty".into(), serde_json::json!(p));
            }
        }
        v
    }
}

/// Token counts of one request, as the server reported them: in `usage`
/// (OpenAI; on every chunk with vLLM's `continuous_usage_stats`), or in
/// llama-server's `timings` (on every chunk with `timings_per_token`).
/// Mid-stream, `completion_tokens` is the running count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// `usage.prompt_tokens`, or `timings.prompt_n + timings.cache_n`.
    pub prompt_tokens: u64,
    /// `usage.completion_tokens`, or `timings.predicted_n`.
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
    /// Present on a chunk that carries `usage` or `timings` (the last one;
    /// with per-chunk statistics, every one).
    pub usage: Option<Usage>,
    /// The ids of this chunk's tokens, as the server sampled them
    /// (`choices[0].token_ids`: vLLM's and `weft serve`'s
    /// `return_token_ids`).
    pub token_ids: Option<Vec<u32>>,
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
    let timings = v.get("timings").filter(|t| t.is_object());
    let timing = |k: &str| timings.and_then(|t| t.get(k)).and_then(Value::as_u64);
    let cache_n = timing("cache_n");
    let usage = match v.get("usage").filter(|u| u.is_object()) {
        Some(u) => {
            let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            let cached = u
                .pointer("/prompt_tokens_details/cached_tokens")
                .and_then(Value::as_u64)
                .or(cache_n);
            Some(Usage {
                prompt_tokens: n("prompt_tokens"),
                completion_tokens: n("completion_tokens"),
                cached_tokens: cached,
            })
        }
        None => match (timing("prompt_n"), cache_n, timing("predicted_n")) {
            (Some(p), Some(c), Some(g)) => Some(Usage {
                prompt_tokens: p + c,
                completion_tokens: g,
                cached_tokens: Some(c),
            }),
            _ => None,
        },
    };
    let token_ids = choice
        .and_then(|c| c.get("token_ids"))
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .map(|i| i.as_u64().and_then(|i| u32::try_from(i).ok()))
                .collect::<Option<Vec<u32>>>()
        })
        .map(|ids| {
            ids.ok_or_else(|| RemoteError::Protocol {
                url: url.to_string(),
                message: format!("`token_ids` is not a list of token ids: {}", clip(data)),
            })
        })
        .transpose()?;
    Ok(Some(Chunk {
        text,
        finish_reason,
        usage,
        token_ids,
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
    fn vllm_per_chunk_usage_and_token_ids() {
        // vLLM's serving_completion.py with `continuous_usage_stats` and
        // `return_token_ids`: running counts on every chunk, no cache count
        // until the last usage chunk.
        let c = parse_chunk("u", r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" a b","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":[1,2,3],"token_ids":[264,293]}],"usage":{"prompt_tokens":3,"total_tokens":7,"completion_tokens":4}}"#).unwrap().unwrap();
        assert_eq!(c.token_ids, Some(vec![264, 293]));
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                cached_tokens: None
            })
        );
        let e = parse_chunk(
            "http://x",
            r#"{"choices":[{"index":0,"text":"a","token_ids":[1,-2]}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("token_ids"), "{e}");
        // No ids: none claimed.
        let c = parse_chunk("u", r#"{"choices":[{"index":0,"text":"a"}]}"#)
            .unwrap()
            .unwrap();
        assert_eq!((c.token_ids, c.usage), (None, None));
    }

    #[test]
    fn llama_server_per_token_timings() {
        // tools/server/server-task.cpp, a partial result with
        // `timings_per_token`: `timings` on every chunk, no `usage`.
        let c = parse_chunk("u", r#"{"choices":[{"text":" x","index":0,"logprobs":null,"finish_reason":null}],"created":1,"model":"m","system_fingerprint":"b1","object":"text_completion","id":"c","timings":{"cache_n":20,"prompt_n":5,"prompt_ms":1.0,"prompt_per_token_ms":0.2,"prompt_per_second":5000.0,"predicted_n":3,"predicted_ms":3.0,"predicted_per_token_ms":1.0,"predicted_per_second":1000.0}}"#).unwrap().unwrap();
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt_tokens: 25,
                completion_tokens: 3,
                cached_tokens: Some(20)
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
        assert!(b.get("repetition_penalty").is_none() && b.get("repeat_penalty").is_none());
        // Every server's per-chunk counts, and plain text from `weft serve`.
        assert_eq!(b["stream_options"]["continuous_usage_stats"], true);
        assert_eq!(b["return_token_ids"], true);
        assert_eq!(b["timings_per_token"], true);
        assert!(b["parallel"].is_null() && b.as_object().unwrap().contains_key("parallel"));
        let b = CompletionRequest {
            repetition_penalty: Some(1.5),
            ..CompletionRequest::greedy("Hi", 4)
        }
        .body();
        assert_eq!(
            (
                b["repetition_penalty"].as_f64(),
                b["repeat_penalty"].as_f64()
            ),
            (Some(1.5), Some(1.5))
        );
        let b = CompletionRequest {
            ignore_eos: true,
            ..CompletionRequest::greedy("Hi", 4)
        }
        .body();
        assert_eq!(b["ignore_eos"], true);
    }
}
