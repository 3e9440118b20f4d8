//! A loaded model: configuration plus weights, from GGUF or a Hugging Face
//! folder. The forward pass is in `forward.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;

use crate::config::{Arch, HfConfig, ModelConfig};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::weights::{to_f32, Bytes, Weight};

/// One transformer block's weights.
pub(crate) struct Layer {
    pub attn_norm: Vec<f32>,
    pub qkv: Projection,
    pub qkv_bias: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub o: Weight,
    pub ffn_norm: Vec<f32>,
    pub gate_up: Projection,
    pub down: Weight,
}

/// Several projections of the same input: fused into one matrix when their
/// storage types agree (one pass over the input), else kept apart.
pub(crate) enum Projection {
    Fused(Weight),
    Split(Vec<Weight>),
}

impl Projection {
    fn new(parts: Vec<Weight>) -> Projection {
        let refs: Vec<&Weight> = parts.iter().collect();
        match Weight::concat_rows(&refs) {
            Some(w) => Projection::Fused(w),
            None => Projection::Split(parts),
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Projection::Fused(w) => w.rows(),
            Projection::Split(ws) => ws.iter().map(Weight::rows).sum(),
        }
    }
}

/// A language model ready to run.
pub struct Model {
    pub config: ModelConfig,
    pub(crate) embed: Weight,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Vec<f32>,
    pub(crate) output: Weight,
    pub(crate) inv_freqs: Vec<f32>,
    pub(crate) pool: Arc<rayon::ThreadPool>,
    /// Attend a KV prefix shared by several sequences of a batch once for
    /// all of them (see `LoadOptions::batch_invariant`).
    pub(crate) shared_prefix_attention: bool,
    pub(crate) split_decode_attention: bool,
    /// Where the model came from, for messages.
    pub source: PathBuf,
    /// Storage type of most weights (e.g. `Q4_1`), for stats.
    pub weight_kind: String,
}

/// Options for loading.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Worker threads for the forward pass (default: all cores).
    pub threads: Option<usize>,
    /// Make every sequence's logits independent of what else is in the
    /// batch, to the bit. By default a KV prefix that several sequences
    /// share (forked threads) is attended once for all of them, which sums
    /// in another order than attending each alone: logits then differ at
    /// float rounding level with the batch's make-up (as in llama.cpp and
    /// vLLM), and greedy decoding may break near-ties differently.
    pub batch_invariant: bool,
    /// Attend every decode step in one pass over its context. By default a
    /// decode step over a long context is split along it
    /// (`kernels::decode`, flash-decoding), which sums in another order;
    /// this turns that off, to compare the two.
    pub one_pass_decode_attention: bool,
}

/// Where to find tensors by their role; the two naming schemes.
trait TensorSource {
    fn has(&self, name: &str) -> bool;
    /// A tensor as (shape outermost first, weight); `expect` is its shape.
    fn weight(&self, name: &str, expect: &[usize]) -> Result<Weight>;
}

fn check_shape(path: &Path, name: &str, dims: &[usize], expect: &[usize]) -> Result<()> {
    if dims != expect {
        return Err(ModelError::tensor(
            path,
            name,
            format!("shape mismatch: the file has {dims:?}, the config implies {expect:?}"),
        ));
    }
    Ok(())
}

impl TensorSource for GgufFile {
    fn has(&self, name: &str) -> bool {
        self.has_tensor(name)
    }

    fn weight(&self, name: &str, expect: &[usize]) -> Result<Weight> {
        let t = self.tensor(name)?;
        check_shape(&self.path, name, &t.dims, expect)?;
        let (rows, cols) = match expect {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            _ => unreachable!("weights are vectors or matrices"),
        };
        if cols % t.dtype.block_size() != 0 {
            return Err(ModelError::tensor(
                &self.path,
                name,
                format!(
                    "row length {cols} is not a multiple of the {:?} block size",
                    t.dtype
                ),
            ));
        }
        if t.dtype == GgmlDType::Q8_1 {
            return Err(ModelError::tensor(
                &self.path,
                name,
                "unsupported tensor type Q8_1 (an activation format, not a weight format)",
            ));
        }
        Ok(Weight::from_ggml(t.dtype, rows, cols, t.bytes))
    }
}

/// A Hugging Face folder: `*.safetensors` shards, memory-mapped.
struct HfFolder {
    dir: PathBuf,
    shards: Vec<(PathBuf, memmap2::Mmap)>,
    index: HashMap<String, usize>,
}

impl HfFolder {
    fn open(dir: &Path) -> Result<HfFolder> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::file(&index_path, format!("invalid JSON: {e}")))?;
            let map = json["weight_map"]
                .as_object()
                .ok_or_else(|| ModelError::file(&index_path, "no `weight_map` object"))?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            names.sort();
            names.dedup();
            // Shards are files in this folder: a name with a path in it
            // (`../../etc/passwd`, `/abs`) is refused, never opened.
            if let Some(n) = names.iter().find(|n| {
                let p = Path::new(n.as_str());
                p.components().count() != 1
                    || !matches!(p.components().next(), Some(std::path::Component::Normal(_)))
            }) {
                return Err(ModelError::file(
                    &index_path,
                    format!("`weight_map` names the shard {n:?}, which is not a file in the model folder"),
                ));
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(ModelError::file(
                    dir,
                    "no model.safetensors or model.safetensors.index.json in this folder",
                ));
            }
            vec![single]
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: read-only map of a file weft does not modify.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| {
                ModelError::file(&path, format!("not a valid safetensors file: {e}"))
            })?;
            for name in st.names() {
                index.insert(name.to_string(), shards.len());
            }
            shards.push((path, map));
        }
        Ok(HfFolder {
            dir: dir.to_path_buf(),
            shards,
            index,
        })
    }
}

impl TensorSource for HfFolder {
    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn weight(&self, name: &str, expect: &[usize]) -> Result<Weight> {
        let shard = *self.index.get(name).ok_or_else(|| {
            ModelError::tensor(&self.dir, name, "missing from every safetensors shard")
        })?;
        let (path, map) = &self.shards[shard];
        let st = safetensors::SafeTensors::deserialize(map)
            .map_err(|e| ModelError::file(path, format!("not a valid safetensors file: {e}")))?;
        let view = st
            .tensor(name)
            .map_err(|e| ModelError::tensor(path, name, e.to_string()))?;
        check_shape(path, name, view.shape(), expect)?;
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => GgmlDType::F32,
            safetensors::Dtype::F16 => GgmlDType::F16,
            safetensors::Dtype::BF16 => GgmlDType::BF16,
            other => {
                return Err(ModelError::tensor(
                    path,
                    name,
                    format!("unsupported dtype {other:?} (supported: F32, F16, BF16)"),
                ))
            }
        };
        let (rows, cols) = match expect {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            _ => unreachable!("weights are vectors or matrices"),
        };
        Ok(Weight::from_ggml(
            dtype,
            rows,
            cols,
            Bytes::owned(view.data()),
        ))
    }
}

fn vector(src: &dyn TensorSource, name: &str, n: usize) -> Result<Vec<f32>> {
    match src.weight(name, &[n])? {
        Weight::F32 { data, .. } => Ok(data.to_vec()),
        other => {
            let mut out = vec![0.0; n];
            other.row(0, &mut out);
            Ok(out)
        }
    }
}

/// Tensor names of one layer in a naming scheme.
struct Names {
    prefix: String,
    gguf: bool,
}

impl Names {
    fn get(&self, role: &str) -> String {
        let n = if self.gguf {
            match role {
                "attn_norm" => "attn_norm.weight",
                "q" => "attn_q.weight",
                "k" => "attn_k.weight",
                "v" => "attn_v.weight",
                "q_bias" => "attn_q.bias",
                "k_bias" => "attn_k.bias",
                "v_bias" => "attn_v.bias",
                "q_norm" => "attn_q_norm.weight",
                "k_norm" => "attn_k_norm.weight",
                "o" => "attn_output.weight",
                "ffn_norm" => "ffn_norm.weight",
                "gate" => "ffn_gate.weight",
                "up" => "ffn_up.weight",
                "down" => "ffn_down.weight",
                _ => unreachable!("unknown role {role}"),
            }
        } else {
            match role {
                "attn_norm" => "input_layernorm.weight",
                "q" => "self_attn.q_proj.weight",
                "k" => "self_attn.k_proj.weight",
                "v" => "self_attn.v_proj.weight",
                "q_bias" => "self_attn.q_proj.bias",
                "k_bias" => "self_attn.k_proj.bias",
                "v_bias" => "self_attn.v_proj.bias",
                "q_norm" => "self_attn.q_norm.weight",
                "k_norm" => "self_attn.k_norm.weight",
                "o" => "self_attn.o_proj.weight",
                "ffn_norm" => "post_attention_layernorm.weight",
                "gate" => "mlp.gate_proj.weight",
                "up" => "mlp.up_proj.weight",
                "down" => "mlp.down_proj.weight",
                _ => unreachable!("unknown role {role}"),
            }
        };
        format!("{}{}", self.prefix, n)
    }
}

fn load_layers(src: &dyn TensorSource, cfg: &ModelConfig, gguf: bool) -> Result<Vec<Layer>> {
    let (d, q, kv, ff, hd) = (
        cfg.d_model,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.d_ff,
        cfg.head_dim,
    );
    (0..cfg.n_layers)
        .map(|i| {
            let names = Names {
                prefix: if gguf {
                    format!("blk.{i}.")
                } else {
                    format!("model.layers.{i}.")
                },
                gguf,
            };
            let n = |r: &str| names.get(r);
            let has_bias = src.has(&n("q_bias"));
            let qkv_bias = if has_bias {
                let mut b = vector(src, &n("q_bias"), q)?;
                b.extend(vector(src, &n("k_bias"), kv)?);
                b.extend(vector(src, &n("v_bias"), kv)?);
                Some(b)
            } else {
                None
            };
            let qk_norm = cfg.arch == Arch::Qwen3 || src.has(&n("q_norm"));
            Ok(Layer {
                attn_norm: vector(src, &n("attn_norm"), d)?,
                qkv: Projection::new(vec![
                    src.weight(&n("q"), &[q, d])?,
                    src.weight(&n("k"), &[kv, d])?,
                    src.weight(&n("v"), &[kv, d])?,
                ]),
                qkv_bias,
                q_norm: if qk_norm {
                    Some(vector(src, &n("q_norm"), hd)?)
                } else {
                    None
                },
                k_norm: if qk_norm {
                    Some(vector(src, &n("k_norm"), hd)?)
                } else {
                    None
                },
                o: src.weight(&n("o"), &[d, q])?,
                ffn_norm: vector(src, &n("ffn_norm"), d)?,
                gate_up: Projection::new(vec![
                    src.weight(&n("gate"), &[ff, d])?,
                    src.weight(&n("up"), &[ff, d])?,
                ]),
                down: src.weight(&n("down"), &[d, ff])?,
            })
        })
        .collect()
}

fn build_pool(opts: &LoadOptions) -> Result<Arc<rayon::ThreadPool>> {
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("weft-worker-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| ModelError::Invalid(format!("cannot start {threads} worker threads: {e}")))
}

impl Model {
    /// Loads a `.gguf` file or a Hugging Face folder.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model> {
        if path.is_dir() {
            Self::load_hf(path, opts)
        } else if path.exists() {
            Self::load_gguf(&GgufFile::open(path)?, opts)
        } else {
            Err(ModelError::file(path, "no such file or folder"))
        }
    }

    pub fn load_gguf(g: &GgufFile, opts: &LoadOptions) -> Result<Model> {
        let cfg = ModelConfig::from_gguf(g)?;
        // The largest matrix first: while it is repacked, its file pages and
        // its copy are both resident, and little else is yet (peak RSS).
        let embed = g.weight("token_embd.weight", &[cfg.vocab_size, cfg.d_model])?;
        let layers = load_layers(g, &cfg, true)?;
        let output = if g.has_tensor("output.weight") {
            g.weight("output.weight", &[cfg.vocab_size, cfg.d_model])?
        } else {
            embed.clone()
        };
        let norm = vector(g, "output_norm.weight", cfg.d_model)?;
        Self::assemble(cfg, embed, layers, norm, output, g.path.clone(), opts)
    }

    pub fn load_hf(dir: &Path, opts: &LoadOptions) -> Result<Model> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let hf: HfConfig = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(&cfg_path, format!("invalid config: {e}")))?;
        let cfg = ModelConfig::from_hf(&cfg_path, &hf)?;
        let src = HfFolder::open(dir)?;
        let embed = src.weight("model.embed_tokens.weight", &[cfg.vocab_size, cfg.d_model])?;
        let layers = load_layers(&src, &cfg, false)?;
        let output = if src.has("lm_head.weight") && !hf.tie_word_embeddings {
            src.weight("lm_head.weight", &[cfg.vocab_size, cfg.d_model])?
        } else {
            embed.clone()
        };
        let norm = vector(&src, "model.norm.weight", cfg.d_model)?;
        Self::assemble(cfg, embed, layers, norm, output, dir.to_path_buf(), opts)
    }

    fn assemble(
        config: ModelConfig,
        embed: Weight,
        layers: Vec<Layer>,
        norm: Vec<f32>,
        output: Weight,
        source: PathBuf,
        opts: &LoadOptions,
    ) -> Result<Model> {
        let weight_kind = match &layers[0].gate_up {
            Projection::Fused(w) => w.kind(),
            Projection::Split(ws) => ws[0].kind(),
        };
        Ok(Model {
            inv_freqs: config.rope.inv_freqs(),
            config,
            embed,
            layers,
            norm,
            output,
            pool: build_pool(opts)?,
            shared_prefix_attention: !opts.batch_invariant,
            split_decode_attention: !opts.one_pass_decode_attention,
            source,
            weight_kind,
        })
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

/// Converts raw float bytes (for tests and tools).
pub fn floats(dtype: GgmlDType, bytes: &[u8]) -> Vec<f32> {
    to_f32(dtype, bytes)
}
