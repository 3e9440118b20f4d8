//! The KV cache costs memory as it fills, unless reserved: `KvCache::new`
//! allocates it zeroed (no page resident until a slot on it is written) and
//! `KvCache::reserve` makes all of it resident, as `weft serve` does at
//! start (its load test holds RSS flat under load). Measured from the
//! process's resident set (`/proc/self/statm`), in a process of its own.

use weft_model::gguf::GgufFile;
use weft_model::{KvCache, ModelConfig};

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: f64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0 / (1 << 20) as f64
}

#[test]
fn kv_pages_become_resident_when_written_or_reserved() {
    let home = std::env::var_os("HOME").expect("HOME");
    let path =
        std::path::PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let cfg = ModelConfig::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let before = rss_mib();
    let mut kv = KvCache::with_budget_mib(&cfg, 16, 256);
    let allocated = rss_mib() - before;
    assert!(
        allocated < 16.0,
        "a new 256 MiB cache is already {allocated:.1} MiB resident"
    );
    kv.reserve();
    let reserved = rss_mib() - before;
    assert!(
        reserved > 240.0,
        "reserve made only {reserved:.1} MiB of 256 resident"
    );
}
