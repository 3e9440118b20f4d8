//! Python `repr` of the two list shapes the APR traces print: integer lists
//! (`[17, 62, 25, 7]`) and lists of strings (`['25-17=8', '8-7=1']`). The
//! reference writes its traces with f-strings over Python lists, so matching
//! `repr` byte for byte is what keeps our text identical to theirs.

use std::fmt::Write;

/// `[17, 62, 25, 7]`, as Python prints a list of ints.
pub fn format_nums(nums: &[u64]) -> String {
    let mut out = String::with_capacity(2 + nums.len() * 4);
    out.push('[');
    for (i, n) in nums.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{n}");
    }
    out.push(']');
    out
}

/// `['25-17=8', '8-7=1']`, as Python prints a list of strings (including its
/// choice of quote and its escapes, for strings a model may have written).
pub fn format_str_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_str_repr(&mut out, item.as_ref());
    }
    out.push(']');
    out
}

fn push_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nums_match_python_repr() {
        assert_eq!(format_nums(&[17, 62, 25, 7]), "[17, 62, 25, 7]");
        assert_eq!(format_nums(&[63]), "[63]");
        assert_eq!(format_nums(&[]), "[]");
    }

    #[test]
    fn string_lists_match_python_repr() {
        let empty: [&str; 0] = [];
        assert_eq!(format_str_list(&empty), "[]");
        assert_eq!(
            format_str_list(&["25-17=8", "8-7=1"]),
            "['25-17=8', '8-7=1']"
        );
        // Python: repr(["a'b"]) == "[\"a'b\"]"; repr(["a'\"b"]) == "['a\\'\"b']"
        assert_eq!(format_str_list(&["a'b"]), "[\"a'b\"]");
        assert_eq!(format_str_list(&["a'\"b"]), "['a\\'\"b']");
        assert_eq!(format_str_list(&["x\ny\\"]), "['x\\ny\\\\']");
    }
}
