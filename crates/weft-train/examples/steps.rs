//! Runs a few training steps on a data folder and prints tokens/s
//! (`cargo run --release -p weft-train --example steps -- DATA_DIR [rows] [len] [steps]`).
use std::path::Path;
use weft_train::{train, DataPaths, ModelShape, RunOptions, TrainConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let data = DataPaths::from_dir(Path::new(&args[1]));
    let rows = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let len = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(512);
    let steps = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let shape: ModelShape = serde_json::from_str(
        r#"{"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 4096}"#,
    )?;
    let cfg = TrainConfig {
        steps,
        batch_rows: rows,
        seq_len: len,
        eval_every: 0,
        checkpoint_every: 1000,
        ..Default::default()
    };
    let out = std::env::temp_dir().join(format!("weft-steps-{}", std::process::id()));
    let t = std::time::Instant::now();
    let o = train(
        &out,
        &data,
        &shape,
        &cfg,
        &RunOptions {
            fresh: true,
            ..Default::default()
        },
    )?;
    println!(
        "{} steps, {} tokens, {:.0} tok/s, loss {:?}, {:.1}s",
        o.state.step,
        o.state.tokens,
        o.tokens_per_second,
        o.state.last_loss,
        t.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(out);
    Ok(())
}
