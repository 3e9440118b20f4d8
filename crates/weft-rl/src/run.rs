//! The RL loop: each step draws problems, rolls each out G times through
//! the engine with the current weights, scores the rollouts, and trains on
//! them; checkpoints let a rerun of the same command continue exactly.
//!
//! Folders, for `--out OUT`:
//! - `OUT/`: the model folder (the initial model's config, tokenizer and
//!   `task.json`, the trained `model.safetensors`, and `weft_rl.json`:
//!   which run wrote it, finished or not);
//! - `OUT.rl/`: `checkpoint/` (weights, AdamW moments, `state.json`),
//!   `rl_log.jsonl` (one line per step), `policy/` (the weights the engine
//!   samples from, rewritten each step) and the run's `lock`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use weft_model::{LoadOptions, Model, Tokenizer};
use weft_tasks::{CountdownTask, Problem};
use weft_train::model::LlamaParams;
use weft_train::optim::AdamW;
use weft_train::trainer::process_cpu_seconds;

use crate::advantage::group_advantages;
use crate::reward::{reward, RewardConfig};
use crate::rollout::{roll_out, RolloutConfig};
use crate::update::{update, Sequence, UpdateConfig};
use crate::RlError;

/// Everything that decides what a run trains (a resume must keep it, but
/// for `steps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlConfig {
    pub rollout: RolloutConfig,
    pub reward: RewardConfig,
    pub update: UpdateConfig,
    /// Divide advantages by the group's standard deviation.
    pub std_norm: bool,
    /// Problems per step (each rolled out `rollout.group` times).
    pub problems_per_step: usize,
    pub steps: usize,
    /// Linear learning-rate warm-up, then constant.
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub seed: u64,
}

impl RlConfig {
    /// Errors: a setting out of its range, named.
    pub fn validate(&self) -> Result<(), RlError> {
        let bad = |m: String| Err(RlError::BadConfig(m));
        let r = &self.rollout;
        let u = &self.update;
        if r.group < 2 {
            return bad(format!(
                "--group must be at least 2 (GRPO compares rollouts of one problem), got {}",
                r.group
            ));
        }
        if !(r.temperature > 0.0 && r.temperature.is_finite()) {
            return bad(format!(
                "--temperature must be a finite number > 0 (rollouts are sampled), got {}",
                r.temperature
            ));
        }
        if r.budget == 0 {
            return bad("--budget must be at least 1".into());
        }
        // Every weight and penalty: a finite number, and none negative but
        // the format reward (a negative one penalizes unreadable answers'
        // opposite, which has uses).
        let w = &self.reward;
        for (flag, v) in [
            ("--reward-correct", w.correct as f64),
            ("--reward-parallel", w.parallel as f64),
            ("--parallel-cap", w.parallel_cap as f64),
            ("--length-penalty", w.length_penalty as f64),
            ("--duplicate-penalty", w.duplicate_penalty as f64),
            (
                "--repeated-search-penalty",
                w.repeated_search_penalty as f64,
            ),
            ("--weight-decay", self.weight_decay),
            ("--grad-clip", u.grad_clip),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!("{flag} must be a finite number >= 0, got {v}"));
            }
        }
        if !w.format.is_finite() {
            return bad(format!(
                "--reward-format must be a finite number, got {}",
                w.format
            ));
        }
        if self.problems_per_step == 0 || self.steps == 0 {
            return bad("--problems-per-step and --steps must be at least 1".into());
        }
        if !(u.lr > 0.0 && u.lr.is_finite()) {
            return bad(format!("--lr must be a finite number > 0, got {}", u.lr));
        }
        if !(u.clip_eps > 0.0 && u.clip_eps < 1.0) {
            return bad(format!("--clip-eps must be in (0, 1), got {}", u.clip_eps));
        }
        if !(u.kl_coef >= 0.0 && u.kl_coef.is_finite()) {
            return bad(format!(
                "--kl-coef must be a finite number >= 0, got {}",
                u.kl_coef
            ));
        }
        if u.epochs == 0 || u.minibatches == 0 || u.micro_rows == 0 || u.seq_len < 16 {
            return bad("--epochs, --minibatches and --micro-rows must be at least 1, --seq-len at least 16".into());
        }
        Ok(())
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            self.update.lr * (step + 1) as f64 / self.warmup_steps as f64
        } else {
            self.update.lr
        }
    }
}

/// How to run (none of it changes what is trained).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop (with a checkpoint) before a step would pass this many CPU
    /// seconds, the earlier calls' included.
    pub max_cpu_seconds: Option<f64>,
    /// Set from another thread (Ctrl-C) to stop after the current step.
    pub stop: Option<Arc<AtomicBool>>,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Forward-pass threads of the rollouts (default: all cores).
    pub threads: Option<usize>,
    /// Stop once this step is reached (tests of resuming).
    pub stop_at_step: Option<usize>,
}

/// One step, for progress bars and the log: `OUT.rl/rl_log.jsonl` holds one
/// of these per line, as JSON with these field names. Means are over the
/// step's rollouts (`problems_per_step x group`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepReport {
    /// Steps done (1-based), and the run's `--steps`.
    pub step: usize,
    pub steps: usize,
    /// Mean total reward (every term of [`crate::RewardConfig`]) and the
    /// share of rollouts whose answer the verifier accepted (0..1).
    pub reward: f32,
    pub accuracy: f32,
    /// Mean children per rollout, and the share (0..1) of all children
    /// that start from the same state as a sibling
    /// (`weft_protocol::apr::duplicate_children`).
    pub children: f32,
    pub duplicate_fraction: f32,
    /// The share (0..1) of sampled tokens in lines that repeat the search
    /// (`weft_protocol::apr::repeated_search_spans`), every thread counted.
    #[serde(default)]
    pub repeated_token_fraction: f32,
    /// Mean critical-path length in tokens (the longest chain of
    /// dependent threads), and mean parallelism `eta` = total generated
    /// tokens / critical-path tokens (1 = sequential).
    pub critical_path: f32,
    pub parallelism: f32,
    /// Generated tokens per wall-clock second in the rollouts; sampled
    /// (trained) tokens per wall-clock second in the policy update.
    pub rollout_tokens_per_second: f64,
    pub update_tokens_per_second: f64,
    /// The policy loss (token mean of the clipped surrogate, plus the KL
    /// term) and the gradient's global L2 norm before clipping.
    pub loss: f32,
    pub grad_norm: f64,
    /// The learning rate this step used.
    pub lr: f64,
    /// Rollouts whose advantage was not 0 (their group was not all alike):
    /// only these are trained on.
    pub trained_rollouts: usize,
    /// Process CPU seconds of the whole run so far, earlier calls
    /// included (what `--max-cpu-minutes` limits).
    pub cpu_seconds: f64,
}

/// What [`run`] tells its caller while it works: notes as they happen
/// (a resume, a step with nothing to learn from), and every step's report.
#[derive(Debug, Clone, Copy)]
pub enum RlEvent<'a> {
    Note(&'a str),
    Step(&'a StepReport),
}

/// How a call of [`run`] ended.
#[derive(Debug, Clone)]
pub struct RlOutcome {
    pub step: usize,
    pub steps: usize,
    /// `finished`, `cpu_budget_spent`, `interrupted` or `stopped`.
    pub status: &'static str,
    pub resumed_from: Option<usize>,
    pub cpu_seconds: f64,
    pub model_dir: PathBuf,
    pub train_dir: PathBuf,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    step: usize,
    /// Pass over the problems, and the next problem in its order.
    epoch: u64,
    cursor: usize,
    cpu_seconds: f64,
    wall_seconds: f64,
    last_step_cpu: f64,
    optimizer_t: usize,
    config: RlConfig,
    init_from: String,
    problems: usize,
    /// FNV-1a of the problems, in order: a resume must train on the same.
    #[serde(default)]
    problems_hash: u64,
}

/// FNV-1a over the problems' numbers and targets, in order.
fn problems_hash(problems: &[Problem]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for p in problems {
        eat(p.nums.len() as u64);
        for &n in &p.nums {
            eat(n);
        }
        eat(p.target);
    }
    h
}

/// The CLI flag of a setting's path in [`RlConfig`] (`update.lr` ->
/// `--lr`), for messages.
fn flag_of(path: &str) -> String {
    let name = match path {
        "rollout.mode" => return "the --init-from model's kind (apr or sosp)".into(),
        "update.grad_clip" => "grad-clip",
        "update.epochs" => "epochs",
        "reward.correct" => "reward-correct",
        "reward.parallel" => "reward-parallel",
        "reward.format" => "reward-format",
        "reward.length_scale" => "budget",
        "warmup_steps" => "warmup",
        other => other.rsplit('.').next().unwrap_or(other),
    };
    format!("--{}", name.replace('_', "-"))
}

/// `weft_rl.json` in the model folder: which run wrote the model.
/// `finished` is false while the run goes on (or was interrupted).
#[derive(Serialize)]
struct RlRecord<'a> {
    finished: bool,
    /// `training`, `finished`, `cpu_budget_spent`, `interrupted`, `stopped`.
    status: &'a str,
    step: usize,
    steps: usize,
    init_from: &'a str,
    /// CPU and wall seconds of the RL run (not the initial model's).
    cpu_seconds: f64,
    wall_seconds: f64,
    train_dir: String,
    config: &'a RlConfig,
}

/// The training folder of model folder `out`: `OUT.rl` beside it.
pub fn train_dir(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".rl");
    out.with_file_name(name)
}

/// CPU seconds kept back under the budget for the last checkpoint.
const CPU_RESERVE_SECONDS: f64 = 10.0;

/// The files of a model folder that are not its weights.
const MODEL_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "task.json",
];

fn copy_model_files(from: &Path, to: &Path) -> Result<(), RlError> {
    std::fs::create_dir_all(to).map_err(|e| RlError::io(to, e))?;
    for f in MODEL_FILES {
        let src = from.join(f);
        if src.exists() {
            let dst = to.join(f);
            std::fs::copy(&src, &dst).map_err(|e| RlError::io(&dst, e))?;
        }
    }
    Ok(())
}

fn save_tensors(map: &BTreeMap<String, Tensor>, path: &Path) -> Result<(), RlError> {
    let map: std::collections::HashMap<&str, Tensor> =
        map.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&map, &tmp)?;
    // Readable by all, as the model folder's other files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| RlError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| RlError::io(path, e))
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<(), RlError> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(v).map_err(|e| RlError::BadConfig(e.to_string()))?;
    std::fs::write(&tmp, text + "\n").map_err(|e| RlError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| RlError::io(path, e))
}

/// Writes the checkpoint into a new folder, then swaps it in: a crash
/// leaves the old one or the new one whole.
fn save_checkpoint(
    dir: &Path,
    params: &LlamaParams,
    opt: &AdamW,
    st: &State,
) -> Result<(), RlError> {
    let new = dir.with_extension("new");
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&new);
    std::fs::create_dir_all(&new).map_err(|e| RlError::io(&new, e))?;
    save_tensors(&params.tensors(), &new.join("model.safetensors"))?;
    save_tensors(&opt.state(), &new.join("optim.safetensors"))?;
    write_json(&new.join("state.json"), st)?;
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| RlError::io(dir, e))?;
    }
    std::fs::rename(&new, dir).map_err(|e| RlError::io(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn load_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, RlError> {
    let t =
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| RlError::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(t.into_iter().collect())
}

/// The settings that differ between a checkpoint's run and this one
/// (`steps` may change).
fn changes(was: &RlConfig, now: &RlConfig) -> Vec<String> {
    let a = serde_json::to_value(RlConfig {
        steps: 0,
        ..was.clone()
    })
    .unwrap_or_default();
    let b = serde_json::to_value(RlConfig {
        steps: 0,
        ..now.clone()
    })
    .unwrap_or_default();
    let mut out = Vec::new();
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                for (k, v) in x {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, y.get(k).unwrap_or(&serde_json::Value::Null), out);
                }
            }
            _ if a != b => out.push(format!("{} {a} (checkpoint) vs {b} (now)", flag_of(prefix))),
            _ => {}
        }
    }
    walk("", &a, &b, &mut out);
    out
}

/// The next `n` problems in the run's order: each pass over `problems` is
/// shuffled with the seed and the pass number.
fn next_problems(st: &mut State, problems: &[Problem], n: usize, seed: u64) -> Vec<Problem> {
    let order = |epoch: u64| {
        let mut idx: Vec<usize> = (0..problems.len()).collect();
        idx.shuffle(&mut StdRng::seed_from_u64(
            seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ));
        idx
    };
    let mut idx = order(st.epoch);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        if st.cursor >= idx.len() {
            st.epoch += 1;
            st.cursor = 0;
            idx = order(st.epoch);
        }
        out.push(problems[idx[st.cursor]].clone());
        st.cursor += 1;
    }
    out
}

/// Drops log lines of steps after `step` (written after the checkpoint a
/// resume starts from).
fn truncate_log(path: &Path, step: usize) -> Result<(), RlError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let keep: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut out = keep.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| RlError::io(path, e))
}

/// Runs (or resumes) RL from the model folder `init_from` on `problems`,
/// writing the model folder `out` and its training folder
/// ([`train_dir`]). `report` sees every note when it is made and every
/// step's report ([`RlEvent`]).
///
/// Errors: a bad setting, a checkpoint that another configuration wrote
/// (named, setting by setting), a model folder `out` that holds a model
/// but no checkpoint, another run holding the folder's lock, I/O, and a
/// diverged loss.
pub fn run(
    init_from: &Path,
    problems: &[Problem],
    out: &Path,
    cfg: &RlConfig,
    opts: &RunOptions,
    report: &mut dyn FnMut(RlEvent<'_>),
) -> Result<RlOutcome, RlError> {
    cfg.validate()?;
    if problems.is_empty() {
        return Err(RlError::BadConfig("no problems to train on".into()));
    }
    weft_train::alloc::retain_freed_memory();
    let started = Instant::now();
    let cpu_at_start = process_cpu_seconds();
    let dir = train_dir(out);
    // What can be refused is refused before anything is written.
    let shape = weft_train::export::load_shape(init_from)?;
    let rules = CountdownTask::of_dir(init_from)
        .map_err(RlError::BadConfig)?
        .map(|t| t.rules())
        .unwrap_or_default();
    if !dir.join("checkpoint/state.json").exists() && out.join("model.safetensors").exists() {
        return Err(RlError::BadConfig(format!(
            "--out {} holds a model but {} has no checkpoint to resume: write to another --out",
            out.display(),
            dir.display()
        )));
    }
    for p in [out, dir.as_path()] {
        if p.exists() && !p.is_dir() {
            return Err(RlError::BadConfig(format!(
                "{} exists and is not a folder: --out names a model folder to write (new, or \
                 this run's to resume)",
                p.display()
            )));
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| RlError::io(&dir, e))?;
    let lock_path = dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| RlError::io(&lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(RlError::Checkpoint {
                path: dir.clone(),
                reason: "another `weft train rl` is using this folder (its lock is held)".into(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(RlError::io(&lock_path, e)),
    }
    let policy_dir = dir.join("policy");
    copy_model_files(init_from, &policy_dir)?;
    let ckpt = dir.join("checkpoint");
    let log_path = dir.join("rl_log.jsonl");
    let mut notes = Vec::new();
    let device = Device::Cpu;
    let (params, mut opt, mut st, resumed_from) = if ckpt.join("state.json").exists() {
        let text =
            std::fs::read_to_string(ckpt.join("state.json")).map_err(|e| RlError::io(&ckpt, e))?;
        let st: State = serde_json::from_str(&text).map_err(|e| RlError::Checkpoint {
            path: ckpt.clone(),
            reason: format!("state.json: {e}"),
        })?;
        let diff = changes(&st.config, cfg);
        if !diff.is_empty() {
            return Err(RlError::Checkpoint {
                path: ckpt.clone(),
                reason: format!(
                    "it was written with other settings: {} (only --steps, --max-cpu-minutes, \
                     --checkpoint-every, --threads and --quiet may change on resume; to start \
                     over, use another --out)",
                    diff.join("; ")
                ),
            });
        }
        if cfg.steps < st.step {
            return Err(RlError::Checkpoint {
                path: ckpt.clone(),
                reason: format!(
                    "it is at step {} already, past --steps {}: give --steps {} or more to go on",
                    st.step, cfg.steps, st.step
                ),
            });
        }
        if st.init_from != init_from.display().to_string() {
            return Err(RlError::Checkpoint {
                path: ckpt.clone(),
                reason: format!(
                    "it started from {}, not {}: give the same --init-from",
                    st.init_from,
                    init_from.display()
                ),
            });
        }
        let same = if st.problems_hash == 0 {
            st.problems == problems.len()
        } else {
            st.problems_hash == problems_hash(problems)
        };
        if !same {
            return Err(RlError::Checkpoint {
                path: ckpt.clone(),
                reason: format!(
                    "it trained on other problems ({} then, {} now, or the same number in \
                     another order): give the same --problems file",
                    st.problems,
                    problems.len()
                ),
            });
        }
        if st.problems != problems.len() {
            return Err(RlError::Checkpoint {
                path: ckpt.clone(),
                reason: format!(
                    "it trained on {} problems, not {}: give the same --problems file",
                    st.problems,
                    problems.len()
                ),
            });
        }
        let params = LlamaParams::from_tensors(
            &shape,
            load_tensors(&ckpt.join("model.safetensors"))?,
            &device,
        )?;
        let mut opt = AdamW::new(&params.vars, 0.9, 0.99, 1e-8, cfg.weight_decay)?;
        opt.load_state(load_tensors(&ckpt.join("optim.safetensors"))?)?;
        opt.t = st.optimizer_t;
        truncate_log(&log_path, st.step)?;
        note(
            &mut notes,
            report,
            format!(
                "resumed from step {} of {} ({})",
                st.step,
                cfg.steps,
                ckpt.display()
            ),
        );
        let from = st.step;
        let mut st = st;
        st.config.steps = cfg.steps;
        (params, opt, st, Some(from))
    } else {
        if out.join("model.safetensors").exists() {
            return Err(RlError::Checkpoint {
                path: out.to_path_buf(),
                reason: format!(
                    "it holds a model but {} has no checkpoint to resume; write to another --out",
                    dir.display()
                ),
            });
        }
        let _ = std::fs::remove_file(&log_path);
        let params = weft_train::export::load_model(init_from, &device)?;
        let opt = AdamW::new(&params.vars, 0.9, 0.99, 1e-8, cfg.weight_decay)?;
        note(
            &mut notes,
            report,
            format!(
                "RL from {}: {} of {} x {} rollouts",
                init_from.display(),
                plural(cfg.steps, "step"),
                plural(cfg.problems_per_step, "problem"),
                cfg.rollout.group
            ),
        );
        let st = State {
            step: 0,
            epoch: 0,
            cursor: 0,
            cpu_seconds: 0.0,
            wall_seconds: 0.0,
            last_step_cpu: 0.0,
            optimizer_t: 0,
            config: cfg.clone(),
            init_from: init_from.display().to_string(),
            problems: problems.len(),
            problems_hash: problems_hash(problems),
        };
        (params, opt, st, None)
    };
    let reference = if cfg.update.kl_coef > 0.0 {
        Some(weft_train::export::load_model(init_from, &device)?)
    } else {
        None
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| RlError::io(&log_path, e))?;
    let base_cpu = st.cpu_seconds;
    let base_wall = st.wall_seconds;
    let cpu_now = |start: f64| base_cpu + process_cpu_seconds() - start;
    let mut status = "finished";
    let save = |params: &LlamaParams,
                opt: &AdamW,
                st: &State,
                finished: bool,
                status: &str|
     -> Result<(), RlError> {
        let mut st = st.clone();
        st.optimizer_t = opt.t;
        save_checkpoint(&ckpt, params, opt, &st)?;
        copy_model_files(init_from, out)?;
        save_tensors(&params.tensors(), &out.join("model.safetensors"))?;
        write_json(
            &out.join("weft_rl.json"),
            &RlRecord {
                finished,
                status,
                step: st.step,
                steps: st.config.steps,
                init_from: &st.init_from,
                cpu_seconds: st.cpu_seconds,
                wall_seconds: st.wall_seconds,
                train_dir: dir.display().to_string(),
                config: &st.config,
            },
        )
    };
    while st.step < cfg.steps {
        if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            status = "interrupted";
            break;
        }
        if opts.stop_at_step.is_some_and(|s| st.step >= s) {
            status = "stopped";
            break;
        }
        let cpu_before = cpu_now(cpu_at_start);
        if let Some(limit) = opts.max_cpu_seconds {
            if cpu_before + st.last_step_cpu > limit - CPU_RESERVE_SECONDS {
                status = "cpu_budget_spent";
                break;
            }
        }
        let batch = next_problems(&mut st, problems, cfg.problems_per_step, cfg.seed);
        // The engine samples from the current weights.
        save_tensors(&params.tensors(), &policy_dir.join("model.safetensors"))?;
        let model = Model::load(
            &policy_dir,
            &LoadOptions {
                threads: opts.threads,
                ..Default::default()
            },
        )?;
        let tok = Tokenizer::load(&policy_dir)?;
        let t0 = Instant::now();
        let step_seed = crate::rollout::rollout_seed(cfg.seed, st.step, usize::MAX);
        let rollouts = roll_out(&model, &tok, &rules, &batch, &cfg.rollout, step_seed)?;
        let rollout_s = t0.elapsed().as_secs_f64();
        drop(model);
        let rewards: Vec<f32> = rollouts
            .iter()
            .map(|r| reward(&cfg.reward, &r.score).total)
            .collect();
        let adv = group_advantages(&rewards, cfg.rollout.group, cfg.std_norm);
        // A rollout whose group was all alike has advantage 0: no gradient.
        let mut seqs = Vec::new();
        let mut trained = 0;
        let penalty = cfg.reward.repeated_search_penalty;
        let zero_sum = cfg.reward.repeated_search_zero_sum;
        let choice_only = cfg.reward.repeated_search_choice_only;
        for (r, &a) in rollouts.iter().zip(&adv) {
            // Token-level credit: -penalty on the lines that repeat the
            // search, and with zero_sum on those that cannot be followed
            // too, the rest of their choice sharing what they lose.
            let offsets: Vec<Vec<(usize, f32)>> = r
                .search_weights
                .iter()
                .map(|ws| {
                    // Without zero_sum only repeats count (run D's rule);
                    // with it, lines that cannot be followed count too.
                    ws.iter()
                        .filter(|w| (zero_sum || w.repeated) && (w.choice || !choice_only))
                        .map(|w| {
                            (
                                w.pos,
                                if zero_sum {
                                    penalty * w.weight
                                } else {
                                    -penalty
                                },
                            )
                        })
                        .filter(|(_, o)| *o != 0.0)
                        .collect()
                })
                .collect();
            // A rollout whose group scored alike still teaches its
            // token-level term.
            if a == 0.0 && offsets.iter().all(Vec::is_empty) {
                continue;
            }
            trained += 1;
            for (s, off) in r.segments.iter().zip(&offsets) {
                if a == 0.0 && off.is_empty() {
                    continue;
                }
                seqs.extend(Sequence::of_segment_with(s, a, off));
            }
        }
        let lr = cfg.lr(st.step);
        let t1 = Instant::now();
        let upd = update(
            &params,
            &mut opt,
            reference.as_ref(),
            &seqs,
            &UpdateConfig {
                lr,
                temperature: cfg.rollout.temperature,
                ..cfg.update
            },
            0,
        )?;
        let update_s = t1.elapsed().as_secs_f64();
        st.step += 1;
        st.last_step_cpu = cpu_now(cpu_at_start) - cpu_before;
        st.cpu_seconds = cpu_now(cpu_at_start);
        st.wall_seconds = base_wall + started.elapsed().as_secs_f64();
        let n = rollouts.len().max(1) as f32;
        let children: usize = rollouts.iter().map(|r| r.children).sum();
        let dups: usize = rollouts.iter().map(|r| r.duplicate_children).sum();
        let sampled: usize = rollouts
            .iter()
            .flat_map(|r| &r.segments)
            .map(|s| s.sampled.len())
            .sum();
        let repeated: usize = rollouts
            .iter()
            .flat_map(|r| &r.repeated)
            .map(Vec::len)
            .sum();
        let generated: usize = rollouts.iter().map(|r| r.score.total_tokens).sum();
        let rep = StepReport {
            step: st.step,
            steps: cfg.steps,
            reward: rewards.iter().sum::<f32>() / n,
            accuracy: rollouts.iter().filter(|r| r.score.correct).count() as f32 / n,
            children: children as f32 / n,
            duplicate_fraction: dups as f32 / children.max(1) as f32,
            repeated_token_fraction: repeated as f32 / sampled.max(1) as f32,
            critical_path: rollouts
                .iter()
                .map(|r| r.score.critical_path_tokens)
                .sum::<usize>() as f32
                / n,
            parallelism: rollouts
                .iter()
                .map(|r| crate::reward::parallelism(&r.score))
                .sum::<f32>()
                / n,
            rollout_tokens_per_second: generated as f64 / rollout_s.max(1e-9),
            update_tokens_per_second: upd.sampled_tokens as f64 / update_s.max(1e-9),
            loss: upd.loss,
            grad_norm: upd.grad_norm,
            lr,
            trained_rollouts: trained,
            cpu_seconds: st.cpu_seconds,
        };
        let line = serde_json::to_string(&rep).map_err(|e| RlError::BadConfig(e.to_string()))?;
        writeln!(log, "{line}").map_err(|e| RlError::io(&log_path, e))?;
        if trained == 0 {
            note(
                &mut notes,
                report,
                format!(
                    "step {}: every group's rollouts scored alike (all right or all wrong), \
                     so the step trained nothing; if this persists, the problems are too easy \
                     or too hard for the model at this --budget (a rollout that runs out of \
                     tokens has no answer), or --group is too small",
                    st.step
                ),
            );
        }
        report(RlEvent::Step(&rep));
        let every = opts.checkpoint_every.max(1);
        if st.step % every == 0 && st.step < cfg.steps {
            save(&params, &opt, &st, false, "training")?;
        }
    }
    st.cpu_seconds = cpu_now(cpu_at_start);
    st.wall_seconds = base_wall + started.elapsed().as_secs_f64();
    let finished = matches!(status, "finished" | "cpu_budget_spent");
    if resumed_from.is_some() || st.step > 0 {
        save(&params, &opt, &st, finished, status)?;
    }
    Ok(RlOutcome {
        step: st.step,
        steps: cfg.steps,
        status,
        resumed_from,
        cpu_seconds: st.cpu_seconds,
        model_dir: out.to_path_buf(),
        train_dir: dir,
        notes,
    })
}

/// `1 step`, `2 steps`.
fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Keeps a note for [`RlOutcome::notes`] and tells the caller now.
fn note(notes: &mut Vec<String>, report: &mut dyn FnMut(RlEvent<'_>), msg: String) {
    report(RlEvent::Note(&msg));
    notes.push(msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_come_in_shuffled_passes() {
        let problems: Vec<Problem> = (0..5)
            .map(|i| Problem {
                nums: vec![i, i + 1],
                target: 10,
            })
            .collect();
        let mut st = State {
            step: 0,
            epoch: 0,
            cursor: 0,
            cpu_seconds: 0.0,
            wall_seconds: 0.0,
            last_step_cpu: 0.0,
            optimizer_t: 0,
            config: test_config(),
            init_from: String::new(),
            problems: 5,
            problems_hash: 0,
        };
        let a = next_problems(&mut st, &problems, 3, 1);
        let b = next_problems(&mut st, &problems, 3, 1);
        // The first pass holds every problem once.
        let mut first: Vec<u64> = a.iter().chain(&b[..2]).map(|p| p.nums[0]).collect();
        first.sort_unstable();
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
        assert_eq!((st.epoch, st.cursor), (1, 1));
    }

    pub(crate) fn test_config() -> RlConfig {
        RlConfig {
            rollout: RolloutConfig {
                mode: crate::Mode::Apr,
                budget: 64,
                temperature: 1.0,
                group: 4,
            },
            reward: RewardConfig::default(),
            update: UpdateConfig {
                lr: 1e-4,
                clip_eps: 0.2,
                kl_coef: 0.0,
                epochs: 1,
                minibatches: 1,
                grad_clip: 1.0,
                seq_len: 256,
                micro_rows: 4,
                freeze_embeddings: false,
                temperature: 1.0,
            },
            std_norm: false,
            problems_per_step: 2,
            steps: 3,
            warmup_steps: 0,
            weight_decay: 0.0,
            seed: 0,
        }
    }

    #[test]
    fn a_resume_names_every_changed_setting_but_steps() {
        let a = test_config();
        let mut b = a.clone();
        b.steps = 99;
        assert!(changes(&a, &b).is_empty());
        b.update.lr = 2e-4;
        b.rollout.group = 8;
        let c = changes(&a, &b);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(
            c.iter()
                .any(|s| s.starts_with("--lr 0.0001 (checkpoint) vs 0.0002")),
            "{c:?}"
        );
        assert!(c.iter().any(|s| s.starts_with("--group")), "{c:?}");
        assert!(a.validate().is_ok());
        b.rollout.group = 1;
        assert!(b.validate().unwrap_err().to_string().contains("--group"));
    }
}
