//! Server-sent events as OpenAI-compatible servers stream them: events are
//! separated by a blank line, each `data:` line adds to the event's data
//! (lines joined with `\n`), lines starting with `:` are comments
//! (keep-alives), other fields (`event:`, `id:`, `retry:`) are ignored.
//! Line ends may be `\n`, `\r\n` or `\r` (the WHATWG `text/event-stream`
//! grammar, <https://html.spec.whatwg.org/multipage/server-sent-events.html>).

/// Incremental parser: feed bytes as they arrive, take whole events' data.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Option<String>,
    /// A `\r` ended the last line; a `\n` right after it belongs to it.
    after_cr: bool,
}

impl SseParser {
    /// Adds `bytes` and returns the data of every event they complete, in
    /// order. Data that is not UTF-8 is decoded lossily (the JSON parser
    /// after this rejects it with a message).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.buf);
                    self.line(&line, &mut out);
                }
                _ => self.buf.push(b),
            }
        }
        out
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<String>) {
        if line.is_empty() {
            if let Some(d) = self.data.take() {
                out.push(d);
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            let v = String::from_utf8_lossy(value);
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&v);
                }
                None => self.data = Some(v.into_owned()),
            }
        }
    }

    /// The data of an event the stream ended without a blank line after
    /// (some servers close right after the last `data:` line).
    pub fn finish(&mut self) -> Option<String> {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            let mut out = Vec::new();
            self.line(&line, &mut out);
        }
        self.data.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<String> {
        let mut p = SseParser::default();
        let mut out: Vec<String> = chunks.iter().flat_map(|c| p.feed(c)).collect();
        out.extend(p.finish());
        out
    }

    #[test]
    fn events_split_anywhere_give_the_same_data() {
        let stream = b": keep-alive\n\ndata: {\"a\":1}\n\ndata: x\ndata: y\r\n\r\nevent: e\ndata:z\r\rdata: [DONE]\n\n";
        let want = vec!["{\"a\":1}", "x\ny", "z", "[DONE]"];
        assert_eq!(all(&[stream]), want);
        // Every split point, including inside `\r\n`.
        for i in 0..stream.len() {
            assert_eq!(all(&[&stream[..i], &stream[i..]]), want, "split at {i}");
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(all(&bytes), want);
    }

    #[test]
    fn a_last_event_without_blank_line_is_kept() {
        assert_eq!(all(&[b"data: a\n\ndata: b"]), vec!["a", "b"]);
        assert_eq!(all(&[b"data: a\n\ndata: b\n"]), vec!["a", "b"]);
        assert!(all(&[b": only a comment\n"]).is_empty());
    }
}
