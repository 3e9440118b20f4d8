//! One module per subcommand.

pub mod bench;
pub mod bench_serve;
pub mod bench_threads;
pub mod bench_train;
pub mod countdown;
pub mod countdown_run;
pub mod data;
pub mod eval;
pub mod model_args;
pub mod run;
pub mod serve;
pub mod solve;
pub mod threads;
pub mod train;
pub mod train_rl;

/// How to reach remote OpenAI-compatible servers (`weft run`, `weft
/// serve`, `weft eval countdown`).
#[derive(clap::Args, Debug, Clone)]
pub struct RemoteArgs {
    /// Run the thread trees on remote OpenAI-compatible servers (vLLM,
    /// SGLang, llama-server, `weft serve`) instead of a local model:
    /// `URL[,URL...]`, e.g. `http://127.0.0.1:8000`. Each thread streams
    /// from `/v1/completions` with its whole text, so joins re-prefill
    /// (cheap with the server's prefix cache); all threads of a request
    /// stay on one server, requests go to the least loaded one, and a
    /// failing one is taken out and probed again later. --model still
    /// names the model (a `.gguf` or a Hugging Face folder): only its
    /// tokenizer and config are read, never its weights.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    pub backend: Vec<String>,
    /// With --backend: sent as `Authorization: Bearer KEY` (the servers'
    /// `--api-key`). The --backend-* settings are ignored without
    /// --backend.
    #[arg(
        long,
        value_name = "KEY",
        env = "WEFT_BACKEND_API_KEY",
        hide_env_values = true
    )]
    pub backend_api_key: Option<String>,
    /// With --backend: seconds to open a connection.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = positive_secs)]
    pub backend_connect_timeout: f64,
    /// With --backend: seconds from sending a request to its first stream
    /// event (the server's queueing and prefill).
    #[arg(long, value_name = "SECS", default_value_t = 120.0, value_parser = positive_secs)]
    pub backend_first_byte_timeout: f64,
    /// With --backend: seconds between two stream events once one began.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = positive_secs)]
    pub backend_idle_timeout: f64,
    /// With --backend: further attempts of a request that failed before its
    /// first byte (refused, reset, 5xx, 429, first-byte timeout), each on
    /// another server where there is one, with a doubling back-off from
    /// 0.2 s. Never after the first byte: that text has been seen.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub backend_retries: u32,
    /// With --backend: requests one server runs at once; more wait for a
    /// slot.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub backend_max_concurrency: u32,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v <= 86_400.0 => Ok(v),
        _ => Err(format!("expected seconds in (0, 86400], got `{s}`")),
    }
}

impl RemoteArgs {
    /// Whether --backend was given.
    pub fn is_remote(&self) -> bool {
        !self.backend.is_empty()
    }

    /// The pool's settings from these flags.
    pub fn pool_config(&self) -> weft_remote::PoolConfig {
        let secs = std::time::Duration::from_secs_f64;
        weft_remote::PoolConfig {
            timeouts: weft_remote::Timeouts {
                connect: secs(self.backend_connect_timeout),
                first_byte: secs(self.backend_first_byte_timeout),
                idle: secs(self.backend_idle_timeout),
            },
            retries: self.backend_retries,
            max_concurrency: self.backend_max_concurrency as usize,
            api_key: self.backend_api_key.clone(),
            ..Default::default()
        }
    }
}

/// A pool over `--backend` URLs, checked: every server is asked for its
/// model, and none answering is an error naming each URL and why.
pub fn remote_pool(args: &RemoteArgs) -> anyhow::Result<weft_remote::Pool> {
    let pool = weft_remote::Pool::new(&args.backend, args.pool_config())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let model = rt.block_on(pool.check())?;
    for s in pool.status() {
        if !s.healthy {
            eprintln!(
                "[weft] backend {} is down for now: {}",
                s.url,
                s.last_error.unwrap_or_default()
            );
        }
    }
    eprintln!(
        "[weft] remote backends: {} (model {model})",
        pool.urls().join(", ")
    );
    Ok(pool)
}
