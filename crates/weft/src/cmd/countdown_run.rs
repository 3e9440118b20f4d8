//! Running Countdown problems through the engine with a trained model: the
//! shared core of `weft eval countdown`, `weft solve` and `weft demo`.

use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weft_engine::{Engine, EngineConfig, Event, RequestSpec, Response};
use weft_model::{LoadOptions, Model, Tokenizer};
use weft_protocol::apr::{root_prompt, sosp_prompt, Apr};
use weft_tasks::{
    arithmetic_stats, state_stats, verify_with, CountdownTask, Problem, Rules, Verdict,
};

/// How the model reasons: `apr` forks sub-searches (the engine runs them as
/// child threads), `sequential` is the SoS+ baseline in one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Apr,
    Sequential,
}

/// A loaded model with what it needs to solve problems.
pub struct Solver {
    /// The local model; `None` when problems run on `remote`.
    pub model: Option<Model>,
    /// Remote servers serving the model, and its context length.
    pub remote: Option<(weft_remote::Pool, usize)>,
    pub tok: Tokenizer,
    pub rules: Rules,
    /// The model folder's `task.json`, when it has one.
    pub task: Option<CountdownTask>,
}

impl Mode {
    /// The mode a model trained on `kind` traces runs in.
    pub fn of_kind(kind: weft_tasks::export::TraceKind) -> Mode {
        match kind {
            weft_tasks::export::TraceKind::Apr => Mode::Apr,
            weft_tasks::export::TraceKind::Sosp => Mode::Sequential,
        }
    }
}

/// One thread of a solved problem, for people to read (`eval --samples`).
#[derive(Debug, Clone, Serialize)]
pub struct TraceThread {
    pub id: usize,
    pub parent: Option<usize>,
    /// What the thread was given (the root's prompt, a child's sub-call).
    pub prompt: String,
    /// What it wrote.
    pub text: String,
}

/// One solved (or failed) problem.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub problem: String,
    pub nums: Vec<u64>,
    pub target: u64,
    pub correct: bool,
    pub verdict: Verdict,
    pub total_tokens: usize,
    pub critical_path_tokens: usize,
    pub children: usize,
    /// Children that start from the same state as an earlier sibling.
    pub duplicate_children: usize,
    pub latency_ms: f64,
    pub arithmetic_lines: usize,
    pub arithmetic_correct: usize,
    /// Search steps written under a state, and those whose numbers left
    /// are right (`weft_tasks::state_stats`, over each thread's prompt and
    /// text).
    pub state_lines: usize,
    pub state_correct: usize,
    /// Threads cut by the token budget or refused forks.
    pub notes: Vec<String>,
    /// Every thread's prompt and text (kept in reports only for
    /// `eval --samples`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<TraceThread>,
}

impl Solver {
    pub fn load(dir: &Path) -> anyhow::Result<Solver> {
        Self::load_with(dir, None)
    }

    /// As [`Solver::load`], with `threads` forward-pass workers (default:
    /// all cores).
    pub fn load_with(dir: &Path, threads: Option<usize>) -> anyhow::Result<Solver> {
        let opts = LoadOptions {
            threads,
            ..Default::default()
        };
        let model =
            Model::load(dir, &opts).with_context(|| format!("loading model {}", dir.display()))?;
        let tok =
            Tokenizer::load(dir).with_context(|| format!("loading tokenizer {}", dir.display()))?;
        let task = CountdownTask::of_dir(dir).map_err(anyhow::Error::msg)?;
        Ok(Solver {
            model: Some(model),
            remote: None,
            tok,
            rules: task.as_ref().map(|t| t.rules()).unwrap_or_default(),
            task,
        })
    }

    /// A solver whose problems run on remote servers serving the model in
    /// `dir` (whose tokenizer, config and `task.json` are read here, not
    /// its weights).
    pub fn load_remote(dir: &Path, remote: &super::RemoteArgs) -> anyhow::Result<Solver> {
        let tok =
            Tokenizer::load(dir).with_context(|| format!("loading tokenizer {}", dir.display()))?;
        let context = weft_model::ModelConfig::load(dir)
            .with_context(|| format!("reading the config of {}", dir.display()))?
            .max_context;
        let task = CountdownTask::of_dir(dir).map_err(anyhow::Error::msg)?;
        Ok(Solver {
            model: None,
            remote: Some((super::remote_pool(remote)?, context)),
            tok,
            rules: task.as_ref().map(|t| t.rules()).unwrap_or_default(),
            task,
        })
    }

    /// The model's context length (tokens).
    pub fn max_context(&self) -> usize {
        match (&self.model, &self.remote) {
            (Some(m), _) => m.config.max_context,
            (None, Some((_, context))) => *context,
            (None, None) => 0,
        }
    }

    /// Engine settings for a per-thread token budget.
    pub fn engine_config(&self, budget: usize) -> EngineConfig {
        EngineConfig {
            max_tokens_per_thread: budget,
            max_tokens_per_request: budget * 64,
            max_children_per_fork: 64,
            kv_budget_mib: 256,
            ..EngineConfig::default()
        }
    }

    /// Solves `problems` `concurrency` at a time (greedy decoding). Each
    /// problem's latency is its request's wall time in the engine.
    pub fn solve(
        &self,
        problems: &[Problem],
        mode: Mode,
        budget: usize,
        concurrency: usize,
        observe: &mut dyn FnMut(&Event),
        progress: &mut dyn FnMut(usize),
    ) -> anyhow::Result<Vec<Outcome>> {
        let cfg = self.engine_config(budget);
        let mut engine = match (&self.model, &self.remote) {
            (Some(m), _) => Engine::new(m, &self.tok, cfg)?,
            (None, Some((pool, context))) => {
                Engine::remote(&self.tok, cfg, pool.clone(), *context)?
            }
            (None, None) => anyhow::bail!("no model and no backend"),
        };
        let protocol: Arc<dyn weft_protocol::Protocol> = match mode {
            Mode::Apr => Arc::new(Apr::default()),
            // The sequential model never writes a fork; should it, the fork
            // is refused and the text decodes on as ordinary text.
            Mode::Sequential => Arc::new(Apr {
                max_depth: 0,
                max_fork_rounds: None,
            }),
        };
        let mut out = Vec::with_capacity(problems.len());
        for chunk in problems.chunks(concurrency.max(1)) {
            let prompts: Vec<String> = chunk.iter().map(|p| prompt(p, mode)).collect();
            let requests = prompts
                .iter()
                .map(|prompt| RequestSpec::text(prompt.clone()).with_protocol(protocol.clone()))
                .collect();
            let responses = engine.run(requests, observe)?;
            for ((p, prompt), r) in chunk.iter().zip(&prompts).zip(responses) {
                out.push(self.outcome(p, prompt, r));
            }
            progress(out.len());
        }
        Ok(out)
    }

    fn outcome(&self, p: &Problem, prompt: &str, r: Response) -> Outcome {
        // The verifier reads the path from the last `Current State` line
        // before the goal claim, which may be the prompt's own.
        let verdict = verify_with(p, &format!("{prompt}{}", r.text), &self.rules);
        let mut arith = weft_tasks::ArithmeticStats::default();
        let mut state = weft_tasks::ArithmeticStats::default();
        let mut trace = Vec::with_capacity(r.threads.len());
        let mut child_prompts = Vec::new();
        for t in &r.threads {
            let s = arithmetic_stats(&t.text);
            arith.lines += s.lines;
            arith.correct += s.correct;
            // A child's state line is in its prompt, which the engine wrote.
            let head = self
                .tok
                .decode(&t.tokens[..t.prompt_tokens.min(t.tokens.len())])
                .unwrap_or_default();
            if let Some(parent) = t.parent {
                child_prompts.push((parent, head.clone()));
            }
            let s = state_stats(&format!("{head}{}", t.text));
            state.lines += s.lines;
            state.correct += s.correct;
            trace.push(TraceThread {
                id: t.id,
                parent: t.parent,
                prompt: if t.parent.is_none() {
                    prompt.to_string()
                } else {
                    head
                },
                text: t.text.clone(),
            });
        }
        Outcome {
            problem: p.to_string(),
            nums: p.nums.clone(),
            target: p.target,
            correct: verdict.correct,
            verdict,
            total_tokens: r.stats.total_tokens,
            critical_path_tokens: r.stats.critical_path_tokens,
            children: r.threads.len().saturating_sub(1),
            duplicate_children: weft_protocol::apr::duplicate_children(
                child_prompts.iter().map(|(p, s)| (*p, s.as_str())),
            ),
            latency_ms: r.stats.wall_ms,
            arithmetic_lines: arith.lines,
            arithmetic_correct: arith.correct,
            state_lines: state.lines,
            state_correct: state.correct,
            notes: r.stats.refused_forks,
            trace,
        }
    }
}

/// The root prompt of `p`, as the training data starts it.
pub fn prompt(p: &Problem, mode: Mode) -> String {
    match mode {
        Mode::Apr => root_prompt(p.target, &p.nums, None),
        Mode::Sequential => sosp_prompt(p.target, &p.nums, None),
    }
}

/// Parses `17 62 25 7 -> 63` (also `17,62,25,7 -> 63`).
pub fn parse_problem(s: &str) -> anyhow::Result<Problem> {
    let (lhs, rhs) = s.split_once("->").ok_or_else(|| {
        anyhow::anyhow!("expected `NUMS -> TARGET`, e.g. `17 62 25 7 -> 63`; got {s:?}")
    })?;
    let nums: Vec<u64> = lhs
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<u64>()
                .with_context(|| format!("{x:?} is not a whole number (0 or more)"))
        })
        .collect::<anyhow::Result<_>>()?;
    let target: u64 = rhs
        .trim()
        .parse()
        .with_context(|| format!("target {:?} is not a whole number (0 or more)", rhs.trim()))?;
    anyhow::ensure!(
        (2..=6).contains(&nums.len()),
        "a problem has 2 to 6 numbers, not {}",
        nums.len()
    );
    anyhow::ensure!(
        nums.iter().chain([&target]).all(|&n| n <= 1_000_000),
        "numbers and target must be at most 1000000"
    );
    Ok(Problem { nums, target })
}

/// Reads a problems file: `{"nums": [..], "target": N}` lines, as
/// `weft data countdown` writes `val_problems.jsonl`. Refuses training data
/// (lines with `text`, as in `train.jsonl`, which repeats a problem once
/// per sequence) and warns about repeated problems, which would count
/// twice.
pub fn read_problems(path: &Path) -> anyhow::Result<Vec<Problem>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        anyhow::ensure!(
            v.get("text").is_none(),
            "{}:{}: this line is a training sequence (it has `text`), not a problem: {} looks like \
             training data (train.jsonl / val.jsonl). Evaluate on a problems file such as \
             DATA/val_problems.jsonl or models/heldout.jsonl",
            path.display(),
            i + 1,
            path.display()
        );
        let nums: Vec<u64> = serde_json::from_value(v["nums"].clone()).with_context(|| {
            format!(
                "{}:{}: `nums` must be a list of numbers",
                path.display(),
                i + 1
            )
        })?;
        let target = v["target"]
            .as_u64()
            .with_context(|| format!("{}:{}: `target` must be a number", path.display(), i + 1))?;
        anyhow::ensure!(
            (2..=6).contains(&nums.len()),
            "{}:{}: a problem has 2 to 6 numbers",
            path.display(),
            i + 1
        );
        out.push(Problem { nums, target });
    }
    anyhow::ensure!(!out.is_empty(), "{} holds no problems", path.display());
    let distinct: std::collections::HashSet<String> = out.iter().map(|p| p.to_string()).collect();
    if distinct.len() < out.len() {
        eprintln!(
            "warning: {} repeats problems ({} lines, {} distinct); each line counts once",
            path.display(),
            out.len(),
            distinct.len()
        );
    }
    Ok(out)
}

/// Where the committed models live: `./models`, else the source tree's.
pub fn models_dir() -> PathBuf {
    let local = PathBuf::from("models");
    if local.join("countdown-apr").exists() {
        return local;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"))
}
