//! The model folder: what `transformers` and `weft-model` load, and
//! nothing else but small metadata.
//!
//! - `config.json`, `generation_config.json`, `model.safetensors`,
//!   `tokenizer.json`, `tokenizer_config.json`: the Hugging Face model;
//! - `weft_train.json`: the run that wrote it ([`crate::record`]);
//! - `task.json`: the data folder's, copied unchanged, when it has one.
//!
//! Every file is written to a temporary name and renamed, with mode 0644.

use crate::data::{load_tokenizer, Specials};
use crate::error::{Result, TrainError};
use crate::model::LlamaParams;
use crate::record::{TrainRecord, RECORD_FILE};
use crate::shape::ModelShape;
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Mode of every file weft-train writes: readable by all, as model files
/// are shared. (candle's safetensors writer goes through a temporary file
/// created 0600.)
const FILE_MODE: u32 = 0o644;

fn set_mode(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(|e| TrainError::io(path, e))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    set_mode(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| TrainError::BadConfig(e.to_string()))?;
    write_atomic(path, text.as_bytes())
}

/// Saves tensors as safetensors at `path` (through a temporary file).
pub(crate) fn save_tensors(map: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let map: std::collections::HashMap<&str, Tensor> =
        map.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&map, &tmp).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    set_mode(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// What an export writes besides the weights.
pub(crate) struct ExportMeta<'a> {
    pub tokenizer: &'a Path,
    pub specials: Specials,
    /// The data folder's `task.json`, copied unchanged.
    pub task: Option<&'a Path>,
    pub record: &'a TrainRecord,
}

/// Writes the model folder `dir`. An unfinished run's record is written
/// first and a finished one's last, so the folder never claims a finished
/// model while its files are being replaced.
pub(crate) fn export_model(dir: &Path, params: &LlamaParams, meta: &ExportMeta) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let record_path = dir.join(RECORD_FILE);
    if !meta.record.finished {
        write_json(&record_path, meta.record)?;
    }
    let tok = load_tokenizer(meta.tokenizer)?;
    // The training data always starts with BOS, so inference adds it too.
    let bos = tok.token_to_id("<s>");
    let eos = meta.specials.eos;
    let pad = meta.specials.pad;
    write_json(
        &dir.join("config.json"),
        &params.shape.hf_config(bos, Some(eos), Some(pad)),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &serde_json::json!({"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}),
    )?;
    save_tensors(&params.tensors(), &dir.join("model.safetensors"))?;
    let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let tok_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(bos),
        "eos_token": name(Some(eos)),
        "pad_token": name(Some(pad)),
        "unk_token": tok.token_to_id("<unk>").and(Some("<unk>")),
        "add_bos_token": bos.is_some(),
        "add_eos_token": false,
        "model_max_length": params.shape.max_position_embeddings,
    });
    write_json(&dir.join("tokenizer_config.json"), &tok_config)?;
    copy_if_changed(meta.tokenizer, &dir.join("tokenizer.json"))?;
    if let Some(task) = meta.task {
        copy_if_changed(task, &dir.join("task.json"))?;
    }
    if meta.record.finished {
        write_json(&record_path, meta.record)?;
    }
    Ok(())
}

fn copy_if_changed(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).map_err(|e| TrainError::io(from, e))?;
    if std::fs::read(to).ok().as_deref() != Some(bytes.as_slice()) {
        write_atomic(to, &bytes)?;
    }
    Ok(())
}

/// The shape a model folder's `config.json` describes.
pub fn load_shape(dir: &Path) -> Result<ModelShape> {
    let path = dir.join("config.json");
    let loaded = ModelShape::load_with_unknown(&path)?;
    Ok(loaded.shape)
}

/// Loads a model folder written by weft-train for further use in Rust
/// (tests, evaluation of the loss).
pub fn load_model(dir: &Path, device: &Device) -> Result<LlamaParams> {
    let shape = load_shape(dir)?;
    let p = dir.join("model.safetensors");
    let tensors =
        candle_core::safetensors::load(&p, device).map_err(|e| TrainError::Checkpoint {
            path: p.clone(),
            reason: e.to_string(),
        })?;
    LlamaParams::from_tensors(&shape, tensors.into_iter().collect(), device)
}
