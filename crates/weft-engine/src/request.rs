//! What a caller asks of the engine: [`RequestSpec`] (prompt, protocol,
//! sampling, stops, limits) and the names it gets back ([`RequestId`],
//! [`FinishReason`]).

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use weft_model::chat::Message;
use weft_protocol::Protocol;

/// A request's handle, unique for the engine's lifetime (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The prompt of a request.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Plain text. It gets the model's BOS token, unless it already starts
    /// with the BOS token's text (`Tokenizer::encode_prompt`).
    Text(String),
    /// Token ids, used as given (no BOS is added).
    Tokens(Vec<u32>),
    /// Chat messages, rendered with the model's chat template (with the
    /// assistant's turn opener) and never given a second BOS: the template
    /// writes `{{ bos_token }}` itself when the model wants one.
    Chat(Vec<Message>),
}

/// Which parallel-reasoning protocol a request's threads speak.
#[derive(Debug, Clone)]
pub enum ProtocolChoice {
    /// A protocol by its command-line name (`apr`, `multiverse`,
    /// `threadweaver`, `npr`, `parallel-r1`); an unknown name is a
    /// [`crate::ValidationError::UnknownProtocol`].
    Name(String),
    /// A protocol object (custom rules, e.g. `Apr { max_depth: 0, .. }`).
    Instance(Arc<dyn Protocol>),
}

/// How the next token is chosen. Validated by [`crate::validate`]:
/// temperature >= 0, `top_p` in (0, 1], `top_k` >= 0, `min_p` in [0, 1].
/// Applied in llama.cpp's order: top-k, top-p, min-p, then temperature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 is greedy.
    pub temperature: f32,
    /// Nucleus threshold; 1.0 is off.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 is off.
    pub top_k: i64,
    /// Drop tokens less likely than `min_p` times the top token; 0 is off.
    pub min_p: f32,
    /// The request's seed. Thread `t`'s generator is seeded from it and the
    /// thread's place in the tree (`crate::thread_seed`), so the same spec
    /// and seed give the same tree.
    pub seed: u64,
    /// vLLM's `repetition_penalty` (1.0 is off): each distinct token of the
    /// thread's prompt and output so far has its logit divided by it when
    /// positive, multiplied when negative (CTRL, Keskar et al. 2019; as
    /// vLLM and `transformers` apply it). A protocol's own penalty while a
    /// fork is open (NPR) takes its place.
    pub repetition_penalty: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: 0,
            repetition_penalty: 1.0,
        }
    }
}

/// Per-request limits. Each can only tighten the engine's own limit
/// (`EngineConfig`); `None` keeps the engine's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestLimits {
    /// Children one fork may start.
    pub max_children: Option<usize>,
    /// Threads at this depth (root = 0) may not fork.
    pub max_depth: Option<u32>,
    /// Generated tokens of all threads together.
    pub max_total_tokens: Option<usize>,
}

/// One request, as a caller writes it. [`crate::Engine::add`] validates it
/// (every rule in [`crate::validate`]) before anything is scheduled.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub prompt: Prompt,
    /// `None`: a plain request, one thread, no fork triggers.
    pub protocol: Option<ProtocolChoice>,
    pub sampling: Sampling,
    /// Tokens the root thread may generate (its visible output). `None`:
    /// the engine's per-thread limit, cut to what the context has left.
    /// Prompt + `max_tokens` over the model's context is refused.
    pub max_tokens: Option<usize>,
    /// Tokens each child thread may generate. `None`: the engine's
    /// per-thread limit.
    pub max_thread_tokens: Option<usize>,
    /// Strings that end the request when the root's generated text contains
    /// one. The visible text stops before it (OpenAI's `stop`); children
    /// keep their protocol's own stops. Empty strings are refused.
    pub stop: Vec<String>,
    /// Token ids that end the root like end-of-sequence (vLLM's
    /// `stop_token_ids`); the token is not part of the text.
    pub stop_token_ids: Vec<u32>,
    /// Decode past end-of-sequence tokens (vLLM's `ignore_eos`; benchmarks).
    pub ignore_eos: bool,
    /// Let special-token text inside chat message contents become control
    /// tokens (`<|im_end|>` written by a user ends their turn). Off by
    /// default: contents are encoded as text (`Tokenizer::encode_chat`).
    pub special_tokens_in_content: bool,
    /// Report the log-probability of each token the root samples, and of
    /// the `k` most likely tokens at that step (OpenAI's `logprobs` /
    /// `top_logprobs`; at most [`crate::validate::MAX_LOGPROBS`]). `None`:
    /// none.
    pub logprobs: Option<usize>,
    pub limits: RequestLimits,
    /// How a `Prompt::Chat` is rendered (`add_generation_prompt`,
    /// `continue_final_message`, as `transformers` takes them).
    pub chat: weft_model::chat::ChatOptions,
    /// Join by KV merge where the protocol joins that way (Multiverse, NPR)
    /// and the engine allows it (`EngineConfig::kv_merge`). `false`:
    /// re-prefill every join, as the methods' client loops over vLLM and
    /// SGLang do.
    pub kv_merge: bool,
}

impl RequestSpec {
    /// A plain text request with every other setting at its default
    /// (greedy, the engine's limits, no stops).
    pub fn text(prompt: impl Into<String>) -> RequestSpec {
        RequestSpec::new(Prompt::Text(prompt.into()))
    }

    pub fn new(prompt: Prompt) -> RequestSpec {
        RequestSpec {
            prompt,
            protocol: None,
            sampling: Sampling::default(),
            max_tokens: None,
            max_thread_tokens: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            special_tokens_in_content: false,
            logprobs: None,
            limits: RequestLimits::default(),
            kv_merge: true,
            chat: weft_model::chat::ChatOptions::default(),
        }
    }

    /// The same request, run as a tree of threads with `protocol`.
    pub fn with_protocol(mut self, protocol: Arc<dyn Protocol>) -> RequestSpec {
        self.protocol = Some(ProtocolChoice::Instance(protocol));
        self
    }

    /// The same request with a protocol given by name (checked by
    /// [`crate::validate`]).
    pub fn with_protocol_name(mut self, name: impl Into<String>) -> RequestSpec {
        self.protocol = Some(ProtocolChoice::Name(name.into()));
        self
    }
}

/// Why a request ended, with OpenAI's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of sequence, a stop string or stop token, or the protocol ended
    /// the root.
    Stop,
    /// A token limit or the model's context.
    Length,
    /// [`crate::Engine::abort`].
    Abort,
    /// The request could not go on (the message is in the response's
    /// `stats.refused_forks`).
    Error,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
