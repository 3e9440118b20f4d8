//! `weft run`: generate text from a prompt, streamed to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use weft_model::chat::{self, Message};
use weft_model::generate::{generate, GenerateParams};
use weft_model::sampling::SamplingParams;

use super::model_args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long, short = 'p', conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat (default: the template's own).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1.0: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the top token (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print timing stats to stderr at the end.
    #[arg(long)]
    pub stats: bool,
    /// Run the request as a tree of threads with this parallel-reasoning
    /// protocol: apr, multiverse, threadweaver, npr, parallel-r1. The tree
    /// streams to stderr; the final text goes to stdout.
    #[arg(long)]
    pub protocol: Option<String>,
    /// With --protocol: write the thread tree and stats as JSON here.
    #[arg(long, requires = "protocol")]
    pub trace: Option<PathBuf>,
    /// With --protocol: most children one fork may start.
    #[arg(long, default_value_t = 16)]
    pub max_children: usize,
    /// With --protocol: threads at this depth may not fork (root = 0).
    #[arg(long, default_value_t = 4)]
    pub max_depth: u32,
    /// With --protocol: KV cache budget in MiB.
    #[arg(long, default_value_t = 512)]
    pub kv_mib: usize,
    /// With --protocol: generated tokens per request (all threads).
    #[arg(long, default_value_t = 16384)]
    pub max_request_tokens: usize,
    /// With --protocol: do not stream the tree to stderr.
    #[arg(long)]
    pub quiet: bool,
    /// With --protocol: re-prefill every join, also for protocols whose
    /// joins merge KV (multiverse, npr), for a model not trained with the
    /// merged position layout.
    #[arg(long)]
    pub reprefill_joins: bool,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => anyhow::bail!("give a prompt with --prompt TEXT or --prompt-file FILE"),
    };
    let (model, tokenizer) = args.model.load()?;
    let text = if args.chat {
        let template = tokenizer
            .chat_template
            .as_deref()
            .context("--chat: this model has no chat template")?;
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", &prompt));
        let bos = tokenizer
            .bos
            .and_then(|b| tokenizer.id_to_token(b))
            .unwrap_or_default();
        let eos = tokenizer
            .eos
            .and_then(|b| tokenizer.id_to_token(b))
            .unwrap_or_default();
        chat::render(template, &messages, true, &bos, &eos)?
    } else {
        prompt
    };
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        seed: args.seed,
    };
    if let Some(name) = &args.protocol {
        let cfg = weft_engine::EngineConfig {
            max_children_per_fork: args.max_children,
            max_depth: args.max_depth,
            max_tokens_per_thread: args.max_tokens,
            max_tokens_per_request: args.max_request_tokens,
            kv_budget_mib: args.kv_mib,
            kv_merge: !args.reprefill_joins,
            sampling,
            ..Default::default()
        };
        super::threads::run_protocol(
            &model,
            &tokenizer,
            name,
            text,
            cfg,
            args.trace.as_deref(),
            args.quiet,
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    // A rendered chat template already holds its BOS text when it wants one.
    let ids = tokenizer.encode(&text, !args.chat)?;
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampling,
        stop: args.stop.clone(),
        stop_ids: Vec::new(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut broken_pipe = false;
    let gen = generate(&model, &tokenizer, &ids, &params, |piece| {
        if !broken_pipe && (out.write_all(piece.as_bytes()).is_err() || out.flush().is_err()) {
            broken_pipe = true;
        }
    })?;
    if !broken_pipe {
        let _ = writeln!(out);
    }
    let s = &gen.stats;
    if args.stats {
        eprintln!(
            "[weft] prompt {} tokens in {:.2}s ({:.1} tok/s); generated {} tokens in {:.2}s ({:.1} tok/s); stop: {:?}",
            s.prompt_tokens,
            s.prompt_secs,
            s.prompt_tokens as f64 / s.prompt_secs.max(1e-9),
            s.generated_tokens,
            s.decode_secs,
            s.generated_tokens as f64 / s.decode_secs.max(1e-9),
            s.stop_reason
        );
    }
    Ok(ExitCode::SUCCESS)
}
