//! `weft run --protocol ...`: a request as a tree of threads, run by the
//! engine; the tree streams to stderr as it grows, the final text goes to
//! stdout, and `--trace` writes the whole tree as JSON.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;
use weft_engine::{Engine, EngineConfig, Event, Request};

/// Prints each thread's text line by line, indented under its parent.
#[derive(Default)]
pub struct TreePrinter {
    partial: HashMap<(usize, usize), String>,
}

impl TreePrinter {
    fn line(depth: u32, thread: usize, text: &str) {
        eprintln!("{}[{thread}] {text}", "  ".repeat(depth as usize));
    }

    pub fn event(&mut self, e: Event) {
        match e {
            Event::ThreadStarted {
                request: _,
                thread,
                parent,
                depth,
                label,
            } => match parent {
                None => Self::line(depth, thread, "── root"),
                Some(p) => Self::line(depth, thread, &format!("── forked from [{p}] ({label})")),
            },
            Event::Text {
                request,
                thread,
                depth,
                piece,
            } => {
                let buf = self.partial.entry((request, thread)).or_default();
                buf.push_str(piece);
                while let Some(nl) = buf.find('\n') {
                    let line: String = buf.drain(..=nl).collect();
                    Self::line(depth, thread, line.trim_end_matches('\n'));
                }
            }
            Event::ThreadFinished {
                request,
                thread,
                depth,
                generated_tokens,
            } => {
                if let Some(rest) = self.partial.remove(&(request, thread)) {
                    if !rest.is_empty() {
                        Self::line(depth, thread, &rest);
                    }
                }
                Self::line(
                    depth,
                    thread,
                    &format!("── done ({generated_tokens} tokens)"),
                );
            }
            Event::Joined {
                request: _,
                thread,
                depth,
                children,
                reused_tokens,
            } => {
                Self::line(
                    depth,
                    thread,
                    &format!("── joined {children} children (KV of {reused_tokens} tokens reused)"),
                );
            }
        }
    }
}

pub fn protocol(name: &str) -> anyhow::Result<Arc<dyn weft_protocol::Protocol>> {
    weft_protocol::by_name(name)
        .map(Arc::from)
        .with_context(|| {
            format!("unknown protocol `{name}` (apr, multiverse, threadweaver, npr, parallel-r1)")
        })
}

/// Runs one request through the engine; returns the process exit code.
pub fn run_protocol(
    model: &weft_model::Model,
    tok: &weft_model::Tokenizer,
    protocol_name: &str,
    prompt: String,
    cfg: EngineConfig,
    trace: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<()> {
    let protocol = protocol(protocol_name)?;
    let mut engine = Engine::new(model, tok, cfg)?;
    let mut printer = TreePrinter::default();
    let mut observe = |e: Event| {
        if !quiet {
            printer.event(e)
        }
    };
    let responses = engine.run(vec![Request { prompt, protocol }], &mut observe)?;
    let resp = responses
        .into_iter()
        .next()
        .context("engine returned no response")?;
    let s = &resp.stats;
    eprintln!(
        "[weft] {} threads, {} forks ({} KV-merge joins); tokens: total {}, critical path {}, parallelism {:.2}; prefill computed {}, reused {}; computed at joins {}; {:.0} ms",
        resp.threads.len(),
        s.forks,
        s.kv_merge_joins,
        s.total_tokens,
        s.critical_path_tokens,
        s.parallelism,
        s.prefill_tokens,
        s.prefill_tokens_saved,
        s.join_tokens_computed,
        s.wall_ms
    );
    for r in &s.refused_forks {
        eprintln!("[weft] refused fork: {r}");
    }
    if let Some(path) = trace {
        let doc = json!({
            "protocol": protocol_name,
            "text": resp.text,
            "threads": resp.threads,
            "stats": {
                "total_tokens": s.total_tokens,
                "critical_path_tokens": s.critical_path_tokens,
                "wall_ms": s.wall_ms,
                "parallelism": s.parallelism,
                "prefill_tokens": s.prefill_tokens,
                "prefill_tokens_saved": s.prefill_tokens_saved,
                "forks": s.forks,
                "kv_merge_joins": s.kv_merge_joins,
                "join_tokens_computed": s.join_tokens_computed,
                "preemptions": s.preemptions,
                "refused_forks": s.refused_forks,
            },
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", resp.text);
    Ok(())
}
