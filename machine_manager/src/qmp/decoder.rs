//! Splits the client's byte stream into JSON values, whatever the read boundaries.
//!
//! ```text
//!   read() chunks:  {"exec | ute":"stop"}{"execute":"co | nt"}\r\n
//!   frames:         Value(stop)          Value(cont)
//! ```
//!
//! Invariants:
//! - Bytes are buffered until they hold a complete value; an incomplete value (serde_json's
//!   EOF error) is never an error, only "wait for more".
//! - After a syntax error, the bytes up to the end of the line holding the error are dropped
//!   (all buffered bytes if that line is not complete yet), so the next line starts afresh:
//!   one malformed request costs one error reply, and the connection stays usable.
//! - The buffer never grows past [`MAX_PENDING`]: a longer unfinished value is dropped with
//!   an error.

use serde_json::{Deserializer, Value};

/// The longest request accepted, in bytes (a QMP request is a few hundred bytes).
pub(crate) const MAX_PENDING: usize = 1 << 20;

/// What [`JsonStream::next_frame`] found in the buffered bytes.
#[derive(Debug, PartialEq)]
pub(crate) enum Frame {
    /// A complete JSON value.
    Value(Value),
    /// Bytes that are not JSON (or too long); they were dropped. Holds the reason.
    Malformed(String),
}

/// Buffered, not yet decoded client input.
#[derive(Debug, Default)]
pub(crate) struct JsonStream {
    pending: Vec<u8>,
    /// Whether bytes arrived that might complete a value since the last failed attempt.
    worth_scanning: bool,
}

impl JsonStream {
    /// Appends bytes read from the client.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        // Only these bytes can end a value that was incomplete before; skipping the rescan
        // otherwise keeps byte-by-byte input linear instead of quadratic.
        if bytes
            .iter()
            .any(|b| matches!(b, b'}' | b']' | b'"' | b'\n' | b'\r' | b' ' | b'\t'))
        {
            self.worth_scanning = true;
        }
    }

    /// Number of buffered bytes.
    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Takes the next complete value (or reports malformed input); `None` when more bytes are
    /// needed.
    pub(crate) fn next_frame(&mut self) -> Option<Frame> {
        if !self.worth_scanning {
            return self.overflow();
        }
        let mut values = Deserializer::from_slice(&self.pending).into_iter::<Value>();
        match values.next() {
            None => {
                // Only whitespace.
                self.pending.clear();
                self.worth_scanning = false;
                None
            }
            Some(Ok(value)) => {
                let consumed = values.byte_offset();
                self.pending.drain(..consumed);
                Some(Frame::Value(value))
            }
            Some(Err(e)) if e.is_eof() => {
                self.worth_scanning = false;
                self.overflow()
            }
            Some(Err(e)) => {
                let offset = byte_offset(&self.pending, e.line(), e.column());
                let end = match self.pending[offset..].iter().position(|&b| b == b'\n') {
                    Some(newline) => offset + newline + 1,
                    None => self.pending.len(),
                };
                self.pending.drain(..end);
                Some(Frame::Malformed(format!("JSON parse error: {e}")))
            }
        }
    }

    /// Drops an unfinished value that exceeds [`MAX_PENDING`].
    fn overflow(&mut self) -> Option<Frame> {
        if self.pending.len() <= MAX_PENDING {
            return None;
        }
        self.pending.clear();
        self.worth_scanning = false;
        Some(Frame::Malformed(format!(
            "request too long: more than {MAX_PENDING} bytes without a complete JSON value"
        )))
    }
}

/// The offset in `bytes` of serde_json's 1-based `line` and `column`, clamped to the length.
fn byte_offset(bytes: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(line - 2)
            .map_or(bytes.len(), |(i, _)| i + 1)
    };
    line_start
        .saturating_add(column.saturating_sub(1))
        .min(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn drain(stream: &mut JsonStream) -> Vec<Frame> {
        std::iter::from_fn(|| stream.next_frame()).collect()
    }

    #[test]
    fn byte_by_byte_input_yields_the_value_once_complete() {
        let mut stream = JsonStream::default();
        let input = br#"{"execute": "stop", "id": [1, "x"]}"#;
        for (i, byte) in input.iter().enumerate() {
            stream.push(&[*byte]);
            let frames = drain(&mut stream);
            if i + 1 < input.len() {
                assert!(frames.is_empty(), "early frame at byte {i}: {frames:?}");
            } else {
                assert_eq!(
                    frames,
                    vec![Frame::Value(json!({"execute": "stop", "id": [1, "x"]}))]
                );
            }
        }
        assert_eq!(stream.pending_len(), 0);
    }

    #[test]
    fn concatenated_values_come_out_in_order() {
        let mut stream = JsonStream::default();
        stream.push(b"{\"a\":1}{\"b\":2}\r\n  {\"c\":3}\n{\"d\"");
        assert_eq!(
            drain(&mut stream),
            vec![
                Frame::Value(json!({"a": 1})),
                Frame::Value(json!({"b": 2})),
                Frame::Value(json!({"c": 3})),
            ]
        );
        stream.push(b":4}");
        assert_eq!(drain(&mut stream), vec![Frame::Value(json!({"d": 4}))]);
    }

    #[test]
    fn malformed_line_is_dropped_and_the_next_line_parses() {
        let mut stream = JsonStream::default();
        stream.push(b"{\"execute\": stop}\r\n{\"execute\":\"cont\"}\r\n");
        let frames = drain(&mut stream);
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert!(matches!(&frames[0], Frame::Malformed(m) if m.starts_with("JSON parse error")));
        assert_eq!(frames[1], Frame::Value(json!({"execute": "cont"})));
    }

    #[test]
    fn malformed_input_without_newline_is_dropped_whole() {
        let mut stream = JsonStream::default();
        stream.push(b"{]");
        assert!(matches!(
            drain(&mut stream).as_slice(),
            [Frame::Malformed(_)]
        ));
        assert_eq!(stream.pending_len(), 0);
        stream.push(b"{\"ok\":true}");
        assert_eq!(drain(&mut stream), vec![Frame::Value(json!({"ok": true}))]);
    }

    #[test]
    fn error_on_a_later_line_of_a_multiline_value_drops_through_that_line() {
        let mut stream = JsonStream::default();
        stream.push(b"{\n\"a\":\n nope,\n}\n{\"b\":1}\n");
        let frames = drain(&mut stream);
        assert!(matches!(&frames[0], Frame::Malformed(_)), "{frames:?}");
        // The tail "}\n" of the bad value is a second error, then the good value parses.
        assert_eq!(frames.last(), Some(&Frame::Value(json!({"b": 1}))));
    }

    #[test]
    fn unfinished_value_beyond_the_limit_is_dropped() {
        let mut stream = JsonStream::default();
        stream.push(b"[\"");
        stream.push(&vec![b'a'; MAX_PENDING]);
        assert!(
            matches!(drain(&mut stream).as_slice(), [Frame::Malformed(m)] if m.contains("too long"))
        );
        assert_eq!(stream.pending_len(), 0);
    }

    #[test]
    fn whitespace_only_input_is_discarded() {
        let mut stream = JsonStream::default();
        stream.push(b" \r\n\t\n");
        assert!(drain(&mut stream).is_empty());
        assert_eq!(stream.pending_len(), 0);
    }

    #[test]
    fn byte_offset_maps_line_and_column() {
        let text = b"ab\ncde\nf";
        assert_eq!(byte_offset(text, 1, 1), 0);
        assert_eq!(byte_offset(text, 2, 2), 4);
        assert_eq!(byte_offset(text, 3, 1), 7);
        assert_eq!(byte_offset(text, 9, 9), text.len());
    }
}
