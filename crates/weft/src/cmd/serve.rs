//! `weft serve`: an OpenAI-compatible server for a local model.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use weft_engine::EngineConfig;
use weft_server::{EngineHandle, ServerConfig};

use super::model_args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Run requests that do not say otherwise (no `parallel` field) as trees
    /// of threads with this protocol: apr, multiverse, threadweaver, npr,
    /// parallel-r1. `"parallel": null` in a request runs it as plain text.
    #[arg(long)]
    pub protocol: Option<String>,
    /// A setting of --protocol, as its reference names it (repeatable; see
    /// `weft run --help`), e.g. `no_conclusion=false`. Requests may set
    /// their own in `parallel.options`.
    #[arg(long = "protocol-option", value_name = "KEY=VALUE", requires = "protocol", value_parser = super::model_args::key_value)]
    pub protocol_options: Vec<(String, String)>,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model name `/v1/models` lists and requests must use (default:
    /// the model file or folder name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Threads decoding at once, all requests together (vLLM's
    /// max_num_seqs); more wait in the queue.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Most requests in flight (running or waiting); more get 503 with
    /// Retry-After (TGI's max-concurrent-requests).
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// KV cache size in MiB, made resident at start (as vLLM reserves its KV
    /// memory), so memory use stays flat under load.
    #[arg(long, default_value_t = 512)]
    pub kv_mib: usize,
    /// Attend a KV prefix that several sequences share once for all of them
    /// (faster for forked threads and shared prompts), at the price of
    /// reproducibility: logits then depend, at rounding level, on what
    /// else is in the batch, so a seeded request may not repeat exactly.
    /// Off by default: the same request and seed give the same text.
    #[arg(long)]
    pub shared_prefix_attention: bool,
    /// Let special-token text that users write inside chat messages (like
    /// `<|im_end|>`) act as control tokens. Off by default: it stays text.
    #[arg(long)]
    pub allow_special_tokens_in_content: bool,
    /// Require `Authorization: Bearer KEY` on /v1/* (default: no key).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Serve as a front over remote OpenAI-compatible servers (with
    /// --backend): the same API, protocols, metrics and thread-tree page;
    /// every thread streams from a backend. --model supplies only the
    /// tokenizer and the context length; --kv-mib does not apply.
    #[command(flatten)]
    pub remote: super::RemoteArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = &args.protocol {
        // Checks the name and every option.
        weft_protocol::with_options(p, &args.protocol_options)?;
    }
    anyhow::ensure!(args.max_num_seqs >= 1, "--max-num-seqs must be at least 1");
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| {
            format!(
                "--host {} --port {} is not an address",
                args.host, args.port
            )
        })?;
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        // A folder's whole name (`Qwen2.5-7B-Instruct`, dots kept); a
        // file's name without its extension.
        let path = args.model.path();
        let name = if path.is_dir() {
            path.file_name()
        } else {
            path.file_stem().or_else(|| path.file_name())
        };
        name.map_or_else(|| "weft".into(), |s| s.to_string_lossy().into_owned())
    });
    anyhow::ensure!(
        args.max_concurrent_requests >= 1,
        "--max-concurrent-requests must be at least 1"
    );
    let engine = if !args.remote.is_remote() {
        let (model, tok) = args.model.load_with(weft_model::LoadOptions {
            batch_invariant: !args.shared_prefix_attention,
            ..Default::default()
        })?;
        let cfg = EngineConfig {
            max_live_threads: args.max_num_seqs,
            kv_budget_mib: args.kv_mib,
            // A request without max_tokens may use the rest of the context,
            // as vLLM allows.
            max_tokens_per_thread: model.config.max_context,
            // The whole --kv-mib budget is resident from the start, as vLLM
            // and llama-server reserve theirs.
            reserve_kv: true,
            ..Default::default()
        };
        EngineHandle::start(
            Arc::new(model),
            Arc::new(tok),
            cfg,
            args.max_concurrent_requests,
        )?
    } else {
        // A front server: the tokenizer and context length from --model,
        // every thread streamed from the backends.
        let path = args.model.path();
        let tok = weft_model::Tokenizer::load(&path)?;
        let context = weft_model::ModelConfig::load(&path)?.max_context;
        let pool = super::remote_pool(&args.remote)?;
        let cfg = EngineConfig {
            max_live_threads: args.max_num_seqs,
            max_tokens_per_thread: context,
            ..Default::default()
        };
        EngineHandle::start_remote(
            pool,
            context,
            Arc::new(tok),
            cfg,
            args.max_concurrent_requests,
        )?
    };
    let server = ServerConfig {
        served_model_name: name.clone(),
        protocol: args.protocol.clone(),
        api_key: args.api_key.clone(),
        special_tokens_in_content: args.allow_special_tokens_in_content,
        protocol_options: args.protocol_options.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!(
            "[weft] serving `{name}` on http://{} (OpenAI API under /v1, live thread trees at /; Ctrl-C stops)",
            listener.local_addr()?
        );
        weft_server::serve(listener, weft_server::router(engine, server))
            .await
            .context("server error")
    })?;
    Ok(ExitCode::SUCCESS)
}
