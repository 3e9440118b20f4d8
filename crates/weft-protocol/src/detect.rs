//! Incremental trigger detection on a thread's streamed text.
//!
//! The engine calls [`Detector::scan`] after each new token's text. A scan
//! looks only at the bytes added since the last scan plus a tail one byte
//! shorter than the longest trigger (so a trigger split across tokens is
//! still seen), which keeps the per-token cost independent of the context
//! length. Only when a trigger is found does the protocol read back further
//! (to the start of its block), once per trigger.

use crate::protocol::{ForkContext, Protocol, Scan};

/// Per-thread detection state: how far the text has been scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detector {
    /// A trigger fires when it ends after this byte offset.
    seen: usize,
}

impl Detector {
    /// Triggers that end after byte `seen` fire.
    pub fn new(seen: usize) -> Self {
        Self { seen }
    }

    /// For a thread whose context starts with `prompt_len` bytes of prompt:
    /// a trigger ending exactly at the prompt's end fires (so a prompt that
    /// ends in a fork trigger forks at once), older ones do not.
    pub fn for_prompt(prompt_len: usize) -> Self {
        Self::new(prompt_len.saturating_sub(1))
    }

    /// Byte offset up to which the text has been scanned.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// Scans what was added to `text` since the last call and moves past
    /// what it read (up to the trigger it reports, if any). After a fork, a
    /// rewrite or a join the engine calls [`Detector::resume_at`] with the
    /// new text length.
    pub fn scan(&mut self, protocol: &dyn Protocol, text: &str, ctx: ForkContext) -> Scan {
        if text.len() <= self.seen {
            // The text shrank or did not grow (the engine rewrote it).
            self.seen = self.seen.min(text.len());
            return Scan::Continue;
        }
        let triggers = protocol.triggers();
        let longest = triggers.iter().map(|t| t.len()).max().unwrap_or(0);
        let mut from = (self.seen + 1).saturating_sub(longest);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let window = &text[from..];
        // The earliest trigger end past `seen` wins; for equal ends the
        // longer trigger (it contains the shorter one).
        let mut best: Option<(usize, &'static str)> = None;
        for &trigger in triggers {
            if trigger.is_empty() {
                continue;
            }
            let mut search = 0;
            while let Some(pos) = window[search..].find(trigger) {
                let end = from + search + pos + trigger.len();
                if end > self.seen {
                    let better = match best {
                        None => true,
                        Some((e, t)) => end < e || (end == e && trigger.len() > t.len()),
                    };
                    if better {
                        best = Some((end, trigger));
                    }
                    break;
                }
                search += pos + trigger.len().max(1);
                while search < window.len() && !window.is_char_boundary(search) {
                    search += 1;
                }
                if search >= window.len() {
                    break;
                }
            }
        }
        let Some((end, trigger)) = best else {
            self.seen = text.len();
            return Scan::Continue;
        };
        // Whatever the outcome, this trigger has been handled.
        self.seen = end;
        protocol.on_trigger(text, trigger, end, ctx)
    }

    /// Continue after the engine replaced the text (fork, rewrite, join):
    /// nothing before `len` fires again.
    pub fn resume_at(&mut self, len: usize) {
        self.seen = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threadweaver::ThreadWeaver;

    const BLOCK: &str = "<Outlines><Outline>1: a</Outline></Outlines>";

    #[test]
    fn a_prompt_ending_in_a_trigger_forks_at_once() {
        let mut d = Detector::for_prompt(BLOCK.len());
        let scan = d.scan(&ThreadWeaver::default(), BLOCK, ForkContext::default());
        assert!(matches!(scan, Scan::Fork(f) if f.segment_end == BLOCK.len()));
    }

    #[test]
    fn triggers_already_in_the_prompt_do_not_fire_again() {
        let text = format!("{BLOCK}\n<Thread>\n1: a</Thread>\n");
        let mut d = Detector::for_prompt(text.len());
        let tw = ThreadWeaver::default();
        assert_eq!(d.scan(&tw, &text, ForkContext::default()), Scan::Continue);
        let more = format!("{text}more text");
        assert_eq!(d.scan(&tw, &more, ForkContext::default()), Scan::Continue);
        assert_eq!(d.seen(), more.len());
    }

    #[test]
    fn a_token_that_runs_past_the_trigger_cuts_the_segment_at_it() {
        let text = format!("{BLOCK}\nand on");
        let mut d = Detector::for_prompt(0);
        let Scan::Fork(fork) = d.scan(&ThreadWeaver::default(), &text, ForkContext::default())
        else {
            panic!("no fork");
        };
        assert_eq!(fork.segment_end, BLOCK.len());
    }

    #[test]
    fn a_trigger_split_across_tokens_is_found() {
        let tw = ThreadWeaver::default();
        let mut d = Detector::for_prompt(0);
        let split = BLOCK.len() - 4;
        assert_eq!(
            d.scan(&tw, &BLOCK[..split], ForkContext::default()),
            Scan::Continue
        );
        assert!(matches!(
            d.scan(&tw, BLOCK, ForkContext::default()),
            Scan::Fork(_)
        ));
    }
}
