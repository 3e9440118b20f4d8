//! `weft run`: generate text from a prompt, streamed to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use weft_engine::{Engine, EngineConfig, Event, Prompt, ProtocolChoice, RequestSpec, Sampling};
use weft_model::chat::Message;

use super::model_args::ModelArgs;
use super::threads::{self, TreePrinter};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long, short = 'p', conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file (`-`: standard input).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat (default: the template's own).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Most tokens to generate (with --protocol: per thread). The prompt
    /// plus this must fit the model's context.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature, >= 0; 0 is greedy (the default), and then
    /// --top-k, --top-p, --min-p and --seed change nothing.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub top_k: i64,
    /// Nucleus sampling threshold, in (0, 1] (1.0: off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the top token (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Divide the logit of every token already in the prompt or the output
    /// by this (multiply a negative one), as vLLM's `repetition_penalty`
    /// (1.0: off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// Random seed for sampling (the same seed gives the same text; -1: a
    /// new one each run, as llama.cpp's -1).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: i64,
    /// End the output before this string (repeatable; not empty). With
    /// --protocol it applies to the root's text; children keep the
    /// protocol's own stops.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Decode past end-of-sequence tokens, up to --max-tokens (as vLLM's and
    /// llama.cpp's --ignore-eos; for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
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
    /// With --protocol: threads at this depth may not fork (root = 0). The
    /// protocol's own limit applies too (multiverse and npr: 6, as their
    /// authors' engines).
    #[arg(long, default_value_t = 6)]
    pub max_depth: u32,
    /// With --protocol: a setting of the protocol, as its reference names
    /// it (repeatable): threadweaver `no_conclusion=false`,
    /// `max_fork_rounds=N`; parallel-r1 `num_paths=N`,
    /// `max_iterations_for_parallel_thinking=N`; multiverse/npr/apr
    /// `max_depth=N`; multiverse/npr `max_children=N`; npr
    /// `repetition_penalty=X`; apr `max_fork_rounds=N`.
    #[arg(long = "protocol-option", value_name = "KEY=VALUE", requires = "protocol", value_parser = super::model_args::key_value)]
    pub protocol_options: Vec<(String, String)>,
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
    #[command(flatten)]
    pub remote: super::RemoteArgs,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading the prompt from standard input")?;
            text
        }
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => anyhow::bail!("give a prompt with --prompt TEXT or --prompt-file FILE"),
    };
    // Remote: the tokenizer and the context length only.
    let (model, tokenizer, remote) = if !args.remote.is_remote() {
        let (m, t) = args.model.load()?;
        (Some(m), t, None)
    } else {
        let path = args.model.path();
        let tokenizer = weft_model::Tokenizer::load(&path)?;
        let config = weft_model::ModelConfig::load(&path)?;
        (
            None,
            tokenizer,
            Some((super::remote_pool(&args.remote)?, config.max_context)),
        )
    };
    let mut spec = RequestSpec::new(if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", &prompt));
        Prompt::Chat(messages)
    } else {
        Prompt::Text(prompt)
    });
    spec.protocol = match &args.protocol {
        Some(name) if !args.protocol_options.is_empty() => Some(ProtocolChoice::Instance(
            std::sync::Arc::from(weft_protocol::with_options(name, &args.protocol_options)?),
        )),
        other => other.clone().map(ProtocolChoice::Name),
    };
    spec.sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: match u64::try_from(args.seed) {
            Ok(seed) => seed,
            Err(_) if args.seed == -1 => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            Err(_) => anyhow::bail!("--seed must be >= 0, or -1 for a random seed"),
        },
    };
    spec.max_tokens = Some(args.max_tokens);
    spec.max_thread_tokens = Some(args.max_tokens);
    spec.stop = args.stop.clone();
    spec.ignore_eos = args.ignore_eos;
    spec.limits.max_total_tokens = Some(args.max_request_tokens);
    let cfg = EngineConfig {
        max_children_per_fork: args.max_children,
        max_depth: args.max_depth,
        max_tokens_per_thread: args.max_tokens,
        max_tokens_per_request: args.max_request_tokens,
        kv_budget_mib: args.kv_mib,
        kv_merge: !args.reprefill_joins,
        ..Default::default()
    };
    let mut engine = match (&model, remote) {
        (Some(m), _) => Engine::new(m, &tokenizer, cfg)?,
        (None, Some((pool, max_context))) => Engine::remote(&tokenizer, cfg, pool, max_context)?,
        (None, None) => unreachable!("a model or a backend"),
    };
    let id = engine.add(spec)?;
    let tree = args.protocol.is_some();
    let mut printer = TreePrinter::default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut broken_pipe = false;
    let mut response = None;
    let mut generated = 0;
    while engine.has_work() {
        if !broken_pipe && stdout_closed() {
            // The reader went away before any text was written (protocol
            // mode writes the final text at the end): stop now.
            broken_pipe = true;
            engine.abort(id);
        }
        for event in engine.step()? {
            if tree && !args.quiet {
                printer.event(&event);
            }
            match event {
                Event::Text {
                    thread: 0,
                    text,
                    token_ids,
                    ..
                } => {
                    generated += token_ids.len();
                    // Plain requests stream the root's text as it comes.
                    if !tree
                        && !broken_pipe
                        && (out.write_all(text.as_bytes()).is_err() || out.flush().is_err())
                    {
                        // The reader went away (`| head`): stop decoding now,
                        // quietly, as other Unix tools do.
                        broken_pipe = true;
                        engine.abort(id);
                    }
                }
                Event::Finished { response: r, .. } => response = Some(*r),
                _ => {}
            }
        }
    }
    if broken_pipe {
        if args.stats {
            eprintln!("[weft] stdout closed after {generated} tokens: request aborted");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let resp = response.context("the engine returned no response")?;
    if let Some(name) = &args.protocol {
        threads::report(name, &resp, args.trace.as_deref())?;
        let _ = write!(out, "{}", resp.text);
    }
    let _ = writeln!(out);
    if args.stats {
        let s = &resp.stats;
        let root = &resp.threads[0];
        let decode_s = (s.wall_ms - s.ttft_ms).max(1e-6) / 1e3;
        let rate = if root.generated_tokens > 1 {
            format!(
                ", then {:.1} tok/s",
                (root.generated_tokens - 1) as f64 / decode_s
            )
        } else {
            String::new()
        };
        eprintln!(
            "[weft] prompt: {} tokens, first token after {:.2} s ({:.1} tok/s); generated: {} tokens{rate}; finish: {}",
            resp.prompt_tokens,
            s.ttft_ms / 1e3,
            resp.prompt_tokens as f64 / (s.ttft_ms / 1e3).max(1e-9),
            root.generated_tokens,
            resp.finish_reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether standard output is a pipe whose reader has gone (`poll` reports
/// an error on its write end), without writing to it.
fn stdout_closed() -> bool {
    #[cfg(unix)]
    {
        let mut fd = libc::pollfd {
            fd: libc::STDOUT_FILENO,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        n > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
    }
    #[cfg(not(unix))]
    {
        false
    }
}
