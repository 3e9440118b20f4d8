//! Small text helpers shared by the tag-based protocols (Multiverse, NPR,
//! ThreadWeaver, Parallel-R1): the segment before a trigger, the block that
//! opens with the last opening tag, numbered labels, the fork of one
//! continuation child per label, and the join that concatenates children.

use crate::protocol::{
    check_count, concat_children, malformed, prefix, Action, AfterJoin, ChildPrompt, ChildResult,
    ChildSpec, Fork, Join, Layout, Scan,
};
use crate::ProtocolError;

/// `text[..end]`, the parent's segment up to the end of the trigger, or
/// the refusal (decode on sequentially) when `end` is not a char boundary.
pub(crate) fn segment(text: &str, end: usize) -> Result<&str, Scan> {
    text.get(..end).ok_or_else(|| {
        malformed(
            end,
            "",
            "trigger end is not a char boundary",
            Action::Sequential,
        )
    })
}

/// The byte offset of the last `open` in `segment`, or the refusal (decode
/// on sequentially) of a trigger `close` written with no `open` before it;
/// `reason` says so in the protocol's words.
pub(crate) fn last_open(
    segment: &str,
    open: &str,
    close: &str,
    reason: &'static str,
) -> Result<usize, Scan> {
    segment
        .rfind(open)
        .ok_or_else(|| malformed(segment.len(), close, reason, Action::Sequential))
}

/// The fork ending at byte `end`: one child per label, in order, each a
/// continuation of the parent with the prompt suffix `suffix(label)`.
pub(crate) fn fork_per_label(
    end: usize,
    labels: Vec<String>,
    suffix: impl Fn(&str) -> String,
) -> Scan {
    let children = labels
        .into_iter()
        .enumerate()
        .map(|(index, label)| ChildSpec {
            index,
            prompt: ChildPrompt::Continue {
                suffix: suffix(&label),
            },
            label,
        })
        .collect();
    Scan::Fork(Fork {
        segment_end: end,
        children,
    })
}

/// The join of the protocols that append each child's prompt suffix, text
/// and close to the parent's segment in fork order, then `append`: with
/// `merged`, a KV-merge layout (children at the fork position), else a
/// re-prefill of the text after the segment.
/// `merged: Some(lead)` gives the KV-merge layout with that shared lead
/// (see [`Layout::Merged`]); `None` a re-prefill.
pub(crate) fn concat_join(
    parent: &str,
    fork: &Fork,
    children: &[ChildResult],
    append: &str,
    merged: Option<&str>,
    then: AfterJoin,
) -> Result<Join, ProtocolError> {
    check_count(fork, children)?;
    let segment = prefix(parent, fork.segment_end)?;
    let layout = match merged {
        Some(lead) => Layout::Merged {
            fork_at: fork.segment_end,
            append: append.to_string(),
            lead: lead.to_string(),
        },
        None => Layout::Sequential {
            kept_prefix: fork.segment_end,
        },
    };
    Ok(Join {
        text: concat_children(segment, fork, children, append, merged.unwrap_or("")),
        layout,
        then,
    })
}

/// Labels of numbered entries, as Python's
/// `re.findall(r"<Outline>\s*([0-9]+(?:\.[0-9]+)*)\s*:", block)` with
/// `open` in place of `<Outline>`: `1`, `2`, `1.2`. Entries whose number
/// does not parse are skipped (as `findall` skips them).
pub fn numbered_labels(block: &str, open: &str) -> Vec<String> {
    let mut labels = Vec::new();
    if open.is_empty() {
        return labels;
    }
    let mut rest = block;
    while let Some(pos) = rest.find(open) {
        rest = &rest[pos + open.len()..];
        if let Some((label, after)) = parse_label(rest) {
            labels.push(label.to_string());
            rest = after;
        }
    }
    labels
}

/// `\s*([0-9]+(?:\.[0-9]+)*)\s*:` at the start of `s`: the label and the
/// text after the colon.
fn parse_label(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    let bytes = s.as_bytes();
    let mut i = 0;
    let digits = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let first = digits(0);
    if first == 0 {
        return None;
    }
    i += first;
    while i < bytes.len() && bytes[i] == b'.' {
        let more = digits(i + 1);
        if more == 0 {
            break;
        }
        i += 1 + more;
    }
    let label = &s[..i];
    let after = s[i..].trim_start().strip_prefix(':')?;
    Some((label, after))
}

/// Count of non-overlapping occurrences of `needle`.
pub fn count(haystack: &str, needle: &str) -> usize {
    if needle.is_empty() {
        0
    } else {
        haystack.matches(needle).count()
    }
}

/// Order-preserving de-duplication (Python `list(dict.fromkeys(xs))`).
pub fn dedup(labels: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(labels.len());
    for l in labels {
        if !out.contains(&l) {
            out.push(l);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_reference_regex() {
        let block = "<Outlines>\n<Outline>1: a</Outline>\n<Outline> 2 : b</Outline>\n\
                     <Outline>1.2: c</Outline><Outline>x: d</Outline><Outline>3.: e</Outline>\n\
                     <Outline>4</Outline>";
        assert_eq!(numbered_labels(block, "<Outline>"), ["1", "2", "1.2"]);
        assert_eq!(numbered_labels("", "<Outline>"), Vec::<String>::new());
        assert_eq!(
            numbered_labels("<Outline>", "<Outline>"),
            Vec::<String>::new()
        );
        assert_eq!(dedup(vec!["1".into(), "2".into(), "1".into()]), ["1", "2"]);
    }
}
