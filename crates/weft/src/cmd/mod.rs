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

/// A pool over `--backend` URLs, checked: every server is asked for its
/// model, and none answering is an error naming each URL and why.
pub fn remote_pool(urls: &[String]) -> anyhow::Result<weft_remote::Pool> {
    let pool = weft_remote::Pool::new(urls, weft_remote::PoolConfig::default())?;
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
