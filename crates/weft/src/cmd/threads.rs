//! `weft run --protocol ...`: a request as a tree of threads, run by the
//! engine; the tree streams to stderr as it grows, the final text goes to
//! stdout, and `--trace` writes the whole tree as JSON.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use serde_json::json;
use weft_engine::{Event, RequestId, Response};

/// Prints each thread's text line by line, indented under its parent.
#[derive(Default)]
pub struct TreePrinter {
    partial: HashMap<(RequestId, usize), String>,
}

impl TreePrinter {
    fn line(depth: u32, thread: usize, text: &str) {
        eprintln!("{}[{thread}] {text}", "  ".repeat(depth as usize));
    }

    pub fn event(&mut self, e: &Event) {
        match e {
            Event::ThreadStarted {
                thread,
                parent,
                depth,
                label,
                ..
            } => match parent {
                None => Self::line(*depth, *thread, "── root"),
                Some(p) => Self::line(*depth, *thread, &format!("── forked from [{p}] ({label})")),
            },
            Event::Text {
                request,
                thread,
                depth,
                text,
                ..
            } => {
                let buf = self.partial.entry((*request, *thread)).or_default();
                buf.push_str(text);
                while let Some(nl) = buf.find('\n') {
                    let line: String = buf.drain(..=nl).collect();
                    Self::line(*depth, *thread, line.trim_end_matches('\n'));
                }
            }
            Event::ThreadFinished {
                request,
                thread,
                depth,
                generated_tokens,
            } => {
                if let Some(rest) = self.partial.remove(&(*request, *thread)) {
                    if !rest.is_empty() {
                        Self::line(*depth, *thread, &rest);
                    }
                }
                Self::line(
                    *depth,
                    *thread,
                    &format!("── done ({generated_tokens} tokens)"),
                );
            }
            Event::Joined {
                request,
                thread,
                depth,
                children,
                reused_tokens,
                appended,
            } => {
                if let Some(rest) = self.partial.remove(&(*request, *thread)) {
                    if !rest.is_empty() {
                        Self::line(*depth, *thread, &rest);
                    }
                }
                Self::line(
                    *depth,
                    *thread,
                    &format!("── joined {children} children (KV of {reused_tokens} tokens reused)"),
                );
                // The joined text, as the thread now sees it.
                for line in appended.as_deref().unwrap_or_default().lines() {
                    Self::line(*depth, *thread, line);
                }
            }
            Event::Forked { .. } | Event::Prompt { .. } => {}
            Event::Note {
                request,
                thread,
                depth,
                text,
            } => {
                if let Some(rest) = self.partial.remove(&(*request, *thread)) {
                    if !rest.is_empty() {
                        Self::line(*depth, *thread, &rest);
                    }
                }
                Self::line(*depth, *thread, &format!("── {text}"));
            }
            Event::Finished {
                request, reason, ..
            } => {
                self.partial.retain(|(r, _), _| r != request);
                if *reason == weft_engine::FinishReason::Abort {
                    eprintln!("── request {request} aborted");
                }
            }
        }
    }
}

/// `1 thread`, `2 threads`.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Prints a protocol request's summary to stderr and writes its trace
/// (`--trace`): every thread and the stats, as JSON.
pub fn report(protocol_name: &str, resp: &Response, trace: Option<&Path>) -> anyhow::Result<()> {
    let s = &resp.stats;
    eprintln!(
        "[weft] {}, {} ({} KV-merge joins); tokens: total {}, critical path {}, parallelism {:.2}; prefill computed {}, reused {}; computed at joins {}; {:.0} ms; finish: {}",
        plural(resp.threads.len(), "thread"),
        plural(s.forks, "fork"),
        s.kv_merge_joins,
        s.total_tokens,
        s.critical_path_tokens,
        s.parallelism,
        s.prefill_tokens,
        s.prefill_tokens_saved,
        s.join_tokens_computed,
        s.wall_ms,
        resp.finish_reason
    );
    for r in &s.refused_forks {
        eprintln!("[weft] note: {r}");
    }
    if let Some(path) = trace {
        let doc = json!({
            "protocol": protocol_name,
            "text": resp.text,
            "finish_reason": resp.finish_reason,
            "threads": resp.threads,
            "stats": {
                "total_tokens": s.total_tokens,
                "critical_path_tokens": s.critical_path_tokens,
                "wall_ms": s.wall_ms,
                "ttft_ms": s.ttft_ms,
                "parallelism": s.parallelism,
                "prefill_tokens": s.prefill_tokens,
                "prefill_tokens_saved": s.prefill_tokens_saved,
                "forks": s.forks,
                "kv_merge_joins": s.kv_merge_joins,
                "join_tokens_computed": s.join_tokens_computed,
                "preemptions": s.preemptions,
                "refused_forks": s.refused_forks,
                "approximate_join": s.approximate_join,
                "remote_prompt_tokens": s.remote_prompt_tokens,
                "remote_segments": s.remote_segments,
                "remote_cache_segments": s.remote_cache_segments,
            },
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
