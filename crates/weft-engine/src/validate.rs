//! Every rule a request must pass, checked once, before anything is
//! scheduled: a [`RequestSpec`] in, a [`ValidRequest`] (tokens, resolved
//! protocol and limits) or a [`ValidationError`] naming the field out.
//! Nothing downstream checks these again (the shape of TGI's
//! `router/src/validation.rs`).

use std::sync::Arc;

use weft_model::sampling::SamplingParams;
use weft_model::Tokenizer;
use weft_protocol::Protocol;

use crate::config::EngineConfig;
use crate::request::{Prompt, ProtocolChoice, RequestSpec};

/// Why a request was refused. [`ValidationError::field`] names the request
/// field at fault (OpenAI's `param`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt token id {id} is outside the vocabulary ({vocab} tokens)")]
    PromptToken { id: u32, vocab: usize },
    /// The model has no chat template, or it failed to render.
    #[error("{0}")]
    ChatTemplate(String),
    #[error("cannot tokenize the prompt: {0}")]
    Tokenizer(String),
    #[error("the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is more than the model's context of {context} tokens; shorten the prompt or lower max_tokens")]
    ContextOverflow {
        prompt_tokens: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("the prompt ({prompt_tokens} tokens) leaves no room in the model's context of {context} tokens")]
    PromptTooLong {
        prompt_tokens: usize,
        context: usize,
    },
    #[error("the prompt ({prompt_tokens} tokens) does not fit the KV cache ({kv_tokens} tokens); give the engine more KV memory (EngineConfig::kv_budget_mib, --kv-mib)")]
    KvCapacity {
        prompt_tokens: usize,
        kv_tokens: usize,
    },
    #[error("the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is more than the KV cache holds ({kv_tokens} tokens), so the request could never finish; lower max_tokens, or give the engine more KV memory (EngineConfig::kv_budget_mib, --kv-mib)")]
    KvOverflow {
        prompt_tokens: usize,
        max_tokens: usize,
        kv_tokens: usize,
    },
    #[error("max_tokens must be at least 1")]
    MaxTokens,
    #[error("max_total_tokens must be at least 1")]
    MaxTotalTokens,
    #[error("max_thread_tokens must be at least 1")]
    MaxThreadTokens,
    #[error("stop string {index} is empty (it would end every request at once)")]
    EmptyStop { index: usize },
    #[error("stop token id {id} is outside the vocabulary ({vocab} tokens)")]
    StopToken { id: u32, vocab: usize },
    #[error("temperature must be a number >= 0, got {0}")]
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("top_k must be >= 0 (0 turns it off), got {0}")]
    TopK(i64),
    #[error("min_p must be in [0, 1], got {0}")]
    MinP(f32),
    #[error("repetition_penalty must be a number > 0 (1 turns it off), got {0}")]
    RepetitionPenalty(f32),
    #[error("unknown protocol `{0}` (apr, multiverse, threadweaver, npr, parallel-r1)")]
    UnknownProtocol(String),
    #[error("logprobs must be at most {MAX_LOGPROBS}, got {0}")]
    Logprobs(usize),
}

/// Most alternatives a request may ask log-probabilities for (vLLM's
/// default `max_logprobs`).
pub const MAX_LOGPROBS: usize = 20;

impl ValidationError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        use ValidationError::*;
        match self {
            EmptyPrompt
            | PromptToken { .. }
            | Tokenizer(_)
            | PromptTooLong { .. }
            | KvCapacity { .. } => "prompt",
            KvOverflow { .. } => "max_tokens",
            ChatTemplate(_) => "messages",
            ContextOverflow { .. } | MaxTokens => "max_tokens",
            MaxThreadTokens => "max_thread_tokens",
            MaxTotalTokens => "max_total_tokens",
            EmptyStop { .. } => "stop",
            StopToken { .. } => "stop_token_ids",
            Temperature(_) => "temperature",
            TopP(_) => "top_p",
            TopK(_) => "top_k",
            MinP(_) => "min_p",
            RepetitionPenalty(_) => "repetition_penalty",
            UnknownProtocol(_) => "protocol",
            Logprobs(_) => "logprobs",
        }
    }
}

/// A request that passed [`validate`]: what the engine schedules.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    /// The root's prompt text (decoded from the ids for a token prompt).
    pub text: String,
    /// The root's prompt tokens, BOS included when the policy adds one.
    pub tokens: Vec<u32>,
    /// Re-tokenizing the root's text (at a join) never adds a BOS: the
    /// prompt was rendered by a chat template or given as token ids
    /// (`Tokenizer::encode_prompt`'s `rendered_by_template`).
    pub no_bos: bool,
    pub protocol: Option<Arc<dyn Protocol>>,
    pub sampling: SamplingParams,
    /// The root's token limit (resolved against the context).
    pub max_tokens: usize,
    /// Each child's token limit.
    pub max_thread_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub logprobs: Option<usize>,
    /// Engine limits tightened by the request's own.
    pub max_children: usize,
    pub max_depth: u32,
    pub max_total_tokens: usize,
    /// Join by KV merge where the protocol allows it.
    pub kv_merge: bool,
}

/// Checks `spec` against the model (`tok`, `max_context` tokens), the KV
/// cache (`kv_tokens` slots in all) and the engine's limits. Errors: the
/// first rule broken, as a [`ValidationError`].
pub fn validate(
    spec: RequestSpec,
    tok: &Tokenizer,
    max_context: usize,
    kv_tokens: usize,
    cfg: &EngineConfig,
) -> Result<ValidRequest, ValidationError> {
    let s = spec.sampling;
    if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
        return Err(ValidationError::Temperature(s.temperature));
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return Err(ValidationError::TopP(s.top_p));
    }
    if s.top_k < 0 {
        return Err(ValidationError::TopK(s.top_k));
    }
    if !(0.0..=1.0).contains(&s.min_p) {
        return Err(ValidationError::MinP(s.min_p));
    }
    if !(s.repetition_penalty > 0.0 && s.repetition_penalty.is_finite()) {
        return Err(ValidationError::RepetitionPenalty(s.repetition_penalty));
    }
    if let Some(index) = spec.stop.iter().position(String::is_empty) {
        return Err(ValidationError::EmptyStop { index });
    }
    let vocab = tok.vocab_size();
    if let Some(&id) = spec.stop_token_ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(ValidationError::StopToken { id, vocab });
    }
    if let Some(k) = spec.logprobs.filter(|&k| k > MAX_LOGPROBS) {
        return Err(ValidationError::Logprobs(k));
    }
    if spec.max_tokens == Some(0) {
        return Err(ValidationError::MaxTokens);
    }
    if spec.max_thread_tokens == Some(0) {
        return Err(ValidationError::MaxThreadTokens);
    }
    if spec.limits.max_total_tokens == Some(0) {
        return Err(ValidationError::MaxTotalTokens);
    }
    let protocol = match spec.protocol {
        None => None,
        Some(ProtocolChoice::Instance(p)) => Some(p),
        Some(ProtocolChoice::Name(name)) => match weft_protocol::by_name(&name) {
            Some(p) => Some(Arc::from(p)),
            None => return Err(ValidationError::UnknownProtocol(name)),
        },
    };
    let tokenize = |text: &str, rendered: bool| {
        tok.encode_prompt(text, rendered)
            .map_err(|e| ValidationError::Tokenizer(e.to_string()))
    };
    let (text, tokens, no_bos) = match spec.prompt {
        Prompt::Text(text) if text.is_empty() => return Err(ValidationError::EmptyPrompt),
        Prompt::Chat(messages) if messages.is_empty() => return Err(ValidationError::EmptyPrompt),
        Prompt::Text(text) => {
            let tokens = tokenize(&text, false)?;
            (text, tokens, false)
        }
        Prompt::Chat(messages) => {
            let (text, tokens) = tok
                .encode_chat_with(&messages, spec.chat, spec.special_tokens_in_content)
                .map_err(|e| ValidationError::ChatTemplate(e.to_string()))?;
            (text, tokens, true)
        }
        Prompt::Tokens(tokens) => {
            if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
                return Err(ValidationError::PromptToken { id, vocab });
            }
            let text = tok
                .decode(&tokens)
                .map_err(|e| ValidationError::Tokenizer(e.to_string()))?;
            (text, tokens, true)
        }
    };
    if tokens.is_empty() {
        return Err(ValidationError::EmptyPrompt);
    }
    let max_tokens = match spec.max_tokens {
        // The prompt alone is too long: its fault, not max_tokens'.
        Some(_) if tokens.len() >= max_context => {
            return Err(ValidationError::PromptTooLong {
                prompt_tokens: tokens.len(),
                context: max_context,
            })
        }
        Some(n) if tokens.len() + n > max_context => {
            return Err(ValidationError::ContextOverflow {
                prompt_tokens: tokens.len(),
                max_tokens: n,
                context: max_context,
            })
        }
        Some(n) => n,
        None if tokens.len() >= max_context => {
            return Err(ValidationError::PromptTooLong {
                prompt_tokens: tokens.len(),
                context: max_context,
            })
        }
        // A prompt over the context is the context's fault, whatever the
        // KV cache holds (checked next).
        None if tokens.len() >= kv_tokens => 0,
        // The default: the engine's per-thread limit, cut to what the
        // context and the KV cache leave.
        None => cfg
            .max_tokens_per_thread
            .min(max_context - tokens.len())
            .min(kv_tokens - tokens.len()),
    };
    if tokens.len() >= kv_tokens {
        return Err(ValidationError::KvCapacity {
            prompt_tokens: tokens.len(),
            kv_tokens,
        });
    }
    if tokens.len() + max_tokens > kv_tokens {
        return Err(ValidationError::KvOverflow {
            prompt_tokens: tokens.len(),
            max_tokens,
            kv_tokens,
        });
    }
    let tighten = |own: Option<usize>, engine: usize| own.map_or(engine, |n| n.min(engine));
    Ok(ValidRequest {
        text,
        tokens,
        no_bos,
        protocol,
        sampling: SamplingParams {
            temperature: s.temperature,
            top_k: s.top_k as usize,
            top_p: s.top_p,
            min_p: s.min_p,
            seed: s.seed,
            repetition_penalty: s.repetition_penalty,
        },
        max_tokens,
        max_thread_tokens: spec.max_thread_tokens.unwrap_or(cfg.max_tokens_per_thread),
        stop: spec.stop,
        stop_token_ids: spec.stop_token_ids,
        ignore_eos: spec.ignore_eos,
        logprobs: spec.logprobs,
        max_children: tighten(spec.limits.max_children, cfg.max_children_per_fork),
        max_depth: spec
            .limits
            .max_depth
            .map_or(cfg.max_depth, |d| d.min(cfg.max_depth)),
        max_total_tokens: tighten(spec.limits.max_total_tokens, cfg.max_tokens_per_request),
        kv_merge: spec.kv_merge && cfg.kv_merge,
    })
}
