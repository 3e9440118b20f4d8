//! Whole RL runs on the shipped APR model, small enough for the test
//! command: a toy reward the policy can raise within a minute, and a run
//! cut by a checkpoint that resumes to exactly the weights of a run that
//! was not.

use std::path::{Path, PathBuf};

use weft_rl::run::train_dir;
use weft_rl::{Mode, RewardConfig, RlConfig, RolloutConfig, RunOptions, StepReport, UpdateConfig};
use weft_tasks::{generate_splits, CountdownTask, Problem};

fn apr_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/countdown-apr")
}

/// Fresh problems of the model's own task (not the held-out set).
fn problems(n: usize, seed: u64) -> Vec<Problem> {
    let task = CountdownTask::of_dir(&apr_model()).unwrap().unwrap();
    generate_splits(&task.generator(), seed, n, 0)
        .unwrap()
        .train
}

fn config(steps: usize, reward: RewardConfig, per_step: usize, group: usize) -> RlConfig {
    RlConfig {
        rollout: RolloutConfig {
            mode: Mode::Apr,
            budget: 512,
            temperature: 1.0,
            group,
        },
        reward,
        update: UpdateConfig {
            lr: 1e-4,
            clip_eps: 0.2,
            kl_coef: 0.0,
            epochs: 1,
            minibatches: 1,
            grad_clip: 1.0,
            seq_len: 2048,
            micro_rows: 4,
            freeze_embeddings: false,
            temperature: 1.0,
        },
        std_norm: false,
        problems_per_step: per_step,
        steps,
        warmup_steps: 0,
        weight_decay: 0.0,
        seed: 3,
    }
}

fn run(out: &Path, cfg: &RlConfig, ps: &[Problem], stop_at: Option<usize>) -> Vec<StepReport> {
    let mut steps = Vec::new();
    let opts = RunOptions {
        checkpoint_every: 1,
        stop_at_step: stop_at,
        ..Default::default()
    };
    weft_rl::run(&apr_model(), ps, out, cfg, &opts, &mut |e| {
        if let weft_rl::RlEvent::Step(r) = e {
            steps.push(r.clone())
        }
    })
    .unwrap();
    steps
}

/// The toy task: the reward is minus the critical path (in budgets), so
/// every group has something to learn, and a policy that waits less for
/// its answer scores more. Measured: -0.79 at the first step, -0.57 to
/// -0.63 by steps 10-12 (lr 1e-4, 4 problems x 8 rollouts a step).
#[test]
fn a_toy_reward_rises_within_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let reward = RewardConfig {
        correct: 0.0,
        parallel: 0.0,
        length_penalty: 1.0,
        length_scale: 512,
        ..RewardConfig::default()
    };
    let cfg = config(10, reward, 4, 8);
    let started = std::time::Instant::now();
    let steps = run(&dir.path().join("toy"), &cfg, &problems(200, 11), None);
    let mean = |s: &[StepReport]| s.iter().map(|r| r.reward).sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&steps[..2]), mean(&steps[7..]));
    eprintln!(
        "toy RL: mean reward {first:.3} (steps 1-2) -> {last:.3} (steps 8-10) in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        last >= first + 0.08,
        "the reward did not rise: {first:.3} -> {last:.3}"
    );
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn a_resumed_run_ends_with_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let ps = problems(40, 5);
    let cfg = config(3, RewardConfig::default(), 2, 4);
    let straight = dir.path().join("straight");
    let a = run(&straight, &cfg, &ps, None);
    let cut = dir.path().join("cut");
    let b1 = run(&cut, &cfg, &ps, Some(2));
    assert_eq!(b1.len(), 2);
    assert!(train_dir(&cut).join("checkpoint/state.json").exists());
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cut.join("weft_rl.json")).unwrap()).unwrap();
    assert_eq!(record["finished"], false);
    let b2 = run(&cut, &cfg, &ps, None);
    assert_eq!(b2.len(), 1);
    assert_eq!(
        a[2].reward, b2[0].reward,
        "the third step's rollouts differ"
    );
    assert!(weights(&straight) == weights(&cut), "weights differ");
    let log = std::fs::read_to_string(train_dir(&cut).join("rl_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3);
    // Other problems (the same number, in another order) are refused.
    let mut reversed = ps.clone();
    reversed.reverse();
    let err = weft_rl::run(
        &apr_model(),
        &reversed,
        &cut,
        &cfg,
        &RunOptions::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("other problems"), "{err}");
    // Another setting on resume is refused, by its flag.
    let mut other = cfg.clone();
    other.update.lr = 2e-4;
    other.steps = 4;
    let err = weft_rl::run(
        &apr_model(),
        &ps,
        &cut,
        &other,
        &RunOptions::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--lr 0.0001 (checkpoint) vs 0.0002 (now)"),
        "{err}"
    );
}
