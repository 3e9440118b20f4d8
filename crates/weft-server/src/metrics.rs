//! `/metrics`: Prometheus text from the `metrics` facade, with vLLM's metric
//! names under a `weft:` prefix, plus weft's own (forks, joins, live
//! threads, critical path, parallelism).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use weft_engine::{Engine, Response};

/// The process-wide recorder (installed once; every server in the process
/// reports into it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        use metrics_exporter_prometheus::Matcher;
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0,
            ])
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("weft:critical_path_tokens".into()),
                    &[
                        16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
                    ],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("weft:parallelism".into()),
                    &[1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0],
                )
            })
            .map(PrometheusBuilder::build_recorder);
        match recorder {
            Ok(r) => {
                let h = r.handle();
                // Another recorder may be installed already (an embedding
                // program); then this handle renders only what it sees.
                let _ = metrics::set_global_recorder(r);
                // After the recorder is in place, or the descriptions are lost.
                describe();
                h
            }
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// `# HELP` lines (vLLM's wording where the metric is vLLM's).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "weft:num_requests_running",
        "Number of requests in model execution batches."
    );
    describe_gauge!(
        "weft:num_requests_waiting",
        "Number of requests waiting to be processed."
    );
    describe_gauge!(
        "weft:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage."
    );
    describe_gauge!(
        "weft:live_threads",
        "Threads of all requests that are decoding or waiting for their children."
    );
    describe_counter!(
        "weft:prompt_tokens_total",
        "Number of prefill tokens processed."
    );
    describe_counter!(
        "weft:generation_tokens_total",
        "Number of generation tokens processed (every thread of every request)."
    );
    describe_counter!(
        "weft:request_success_total",
        "Count of successfully processed requests (one per choice), by finish reason."
    );
    describe_counter!(
        "weft:forks_total",
        "Forks: thread groups started by a protocol."
    );
    describe_counter!(
        "weft:joins_total",
        "Joins, by mode: kv_merge (children's KV kept in place) or reprefill."
    );
    describe_histogram!(
        "weft:time_to_first_token_seconds",
        Unit::Seconds,
        "Histogram of time to first token in seconds."
    );
    describe_histogram!(
        "weft:inter_token_latency_seconds",
        Unit::Seconds,
        "Histogram of inter-token latency in seconds (the root thread's tokens)."
    );
    describe_histogram!(
        "weft:e2e_request_latency_seconds",
        Unit::Seconds,
        "Histogram of e2e request latency in seconds."
    );
    describe_histogram!(
        "weft:critical_path_tokens",
        "Tokens on a request's critical path: the longest chain of generated tokens."
    );
    describe_histogram!(
        "weft:parallelism",
        "A request's generated tokens divided by its critical-path tokens."
    );
}

/// Gauges read off the engine after each step.
pub fn engine_gauges(engine: &Engine) {
    let (running, waiting) = engine.request_counts();
    metrics::gauge!("weft:num_requests_running").set(running as f64);
    metrics::gauge!("weft:num_requests_waiting").set(waiting as f64);
    let (live, _) = engine.num_threads();
    metrics::gauge!("weft:live_threads").set(live as f64);
    let total = engine.kv_blocks_total().max(1) as f64;
    let used = total - engine.kv_blocks_available() as f64;
    metrics::gauge!("weft:kv_cache_usage_perc").set(used / total);
}

/// Counters and histograms of one finished request.
pub fn finished(r: &Response) {
    let s = &r.stats;
    metrics::counter!("weft:prompt_tokens_total").increment(r.prompt_tokens as u64);
    metrics::counter!("weft:generation_tokens_total").increment(s.total_tokens as u64);
    metrics::counter!("weft:request_success_total", "finished_reason" => r.finish_reason.as_str())
        .increment(1);
    metrics::counter!("weft:forks_total").increment(s.forks as u64);
    metrics::counter!("weft:num_preemptions_total").increment(s.preemptions as u64);
    let reprefill = s.forks.saturating_sub(s.kv_merge_joins);
    metrics::counter!("weft:joins_total", "mode" => "kv_merge").increment(s.kv_merge_joins as u64);
    metrics::counter!("weft:joins_total", "mode" => "reprefill").increment(reprefill as u64);
    metrics::histogram!("weft:e2e_request_latency_seconds").record(s.wall_ms / 1e3);
    if s.ttft_ms > 0.0 {
        metrics::histogram!("weft:time_to_first_token_seconds").record(s.ttft_ms / 1e3);
    }
    metrics::histogram!("weft:critical_path_tokens").record(s.critical_path_tokens as f64);
    metrics::histogram!("weft:parallelism").record(s.parallelism);
}

/// The gap between two tokens of one request's root.
pub fn inter_token(seconds: f64) {
    metrics::histogram!("weft:inter_token_latency_seconds").record(seconds);
}
