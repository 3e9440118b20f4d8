//! Small text helpers shared by the tag-based protocols.

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
