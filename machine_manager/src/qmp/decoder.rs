//! Splits the client's byte stream into JSON values, whatever the read boundaries.
//!
//! ```text
//!   read() chunks:  {"exec | ute":"stop"}{"execute":"co | nt"}\r\n
//!   frames:         Value(stop)          Value(cont)
//! ```
//!
//! A small scanner finds where each top-level value ends (brackets, strings and escapes;
//! nothing else), resuming where the previous read stopped; only a complete value is handed
//! to serde_json, once. Every input byte is thus examined a bounded number of times, however
//! the input is split: decoding is linear in the input.
//!
//! Invariants:
//! - Bytes are buffered until they hold a complete value; an incomplete value is never an
//!   error, only "wait for more". Several values may arrive in one read, with or without
//!   whitespace between them.
//! - One malformed request costs exactly one [`Frame::Malformed`]:
//!   - a value the scanner could delimit (its brackets balance) that is not valid JSON is
//!     dropped alone, and the next value starts right after it;
//!   - input that cannot be delimited (a byte that cannot start a value, nesting deeper than
//!     [`MAX_DEPTH`], a control character inside a string, an unfinished value longer than
//!     [`MAX_PENDING`], a bare word that is not a JSON literal or number) is dropped through
//!     the end of the line holding the error, however many reads that line takes, so the
//!     next line starts afresh.
//! - The buffered part of an unfinished value never exceeds [`MAX_PENDING`] bytes.

use serde_json::Value;

/// The longest request accepted, in bytes (a QMP request is a few hundred bytes).
pub const MAX_PENDING: usize = 1 << 20;

/// The deepest nesting of arrays and objects the scanner follows; serde_json refuses values
/// nested this deep anyway (its recursion limit).
pub const MAX_DEPTH: usize = 128;

/// An empty buffer larger than this is freed rather than kept for the next request.
const KEEP_CAPACITY: usize = 64 << 10;

/// What [`JsonStream::next_frame`] found in the buffered bytes.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A complete JSON value.
    Value(Value),
    /// Bytes that are not JSON (or too long); they were dropped. Holds the reason.
    Malformed(String),
}

/// Where the scanner is within the current top-level value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Between values: whitespace is skipped.
    #[default]
    Idle,
    /// Inside arrays or objects, `depth` deep (at least 1), outside any string.
    Nested { depth: usize },
    /// Inside a string; `depth` is 0 for a top-level string.
    InString { depth: usize, escaped: bool },
    /// A top-level number or literal (`true`, `false`, `null`).
    Scalar,
}

/// What one byte did to the current value.
enum Step {
    /// The value goes on (or none started yet).
    More,
    /// The value ends with this byte.
    EndsHere,
    /// The value ended just before this byte, which is not consumed.
    EndedBefore,
    /// The input cannot be delimited; holds the reason.
    Undelimited(String),
}

/// Buffered, not yet decoded client input.
#[derive(Debug, Default)]
pub struct JsonStream {
    /// Bytes received and not yet consumed; `pending[..start]` are consumed (dropped on the
    /// next [`JsonStream::push`]).
    pending: Vec<u8>,
    /// Where the current value starts (or, between values, where scanning resumes).
    start: usize,
    /// How many bytes of `pending` the scanner has examined.
    scanned: usize,
    scan: Scan,
    /// Dropping input through the next newline, after an error that could not be delimited.
    skipping_line: bool,
}

impl JsonStream {
    /// Appends bytes read from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        // The bytes before `start` belong to values already returned. The bytes kept arrived
        // with the last push (a value that started earlier has `start` 0), so this moves each
        // byte at most once.
        if self.start > 0 {
            self.pending.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        if self.pending.is_empty() && self.pending.capacity() > KEEP_CAPACITY {
            // Do not keep a megabyte around after one long request.
            self.pending = Vec::new();
        }
        self.pending.extend_from_slice(bytes);
    }

    /// Number of buffered bytes not yet consumed.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn pending_len(&self) -> usize {
        self.pending.len() - self.start
    }

    /// Takes the next complete value (or reports malformed input); `None` when more bytes are
    /// needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.skipping_line && !self.skip_line() {
            return None;
        }
        while self.scanned < self.pending.len() {
            self.skip_quiet_bytes();
            let next = self.pending.get(self.scanned).copied();
            let length = self.scanned - self.start;
            if length > MAX_PENDING || (length == MAX_PENDING && next.is_some()) {
                return Some(self.too_long());
            }
            let Some(byte) = next else {
                break;
            };
            let step = self.step(byte);
            match step {
                Step::More => {
                    self.scanned += 1;
                    if self.scan == Scan::Idle {
                        // Whitespace between values.
                        self.start = self.scanned;
                    }
                }
                Step::EndsHere => {
                    self.scanned += 1;
                    return Some(self.complete(false));
                }
                Step::EndedBefore => return Some(self.complete(true)),
                Step::Undelimited(reason) => {
                    return Some(self.undelimited(format!("JSON parse error: {reason}")))
                }
            }
        }
        None
    }

    /// Skips the bytes that cannot change the scanner's state (ordinary bytes inside a string;
    /// anything but brackets and quotes between them), the bulk of a long request. A plain
    /// loop over a table: this is the one per-byte path, and it stays cheap even unoptimized.
    fn skip_quiet_bytes(&mut self) {
        let quiet = match self.scan {
            Scan::InString { escaped: false, .. } => &STRING_QUIET,
            Scan::Nested { .. } => &NESTED_QUIET,
            _ => return,
        };
        let bytes = self.pending.as_slice();
        let mut i = self.scanned;
        while i < bytes.len() && quiet[usize::from(bytes[i])] {
            i += 1;
        }
        self.scanned = i;
    }

    /// Reports an unfinished value longer than [`MAX_PENDING`] and drops it.
    fn too_long(&mut self) -> Frame {
        self.undelimited(format!(
            "request too long: more than {MAX_PENDING} bytes without a complete JSON value"
        ))
    }

    /// Advances the scanner over `byte`.
    fn step(&mut self, byte: u8) -> Step {
        match self.scan {
            Scan::Idle => match byte {
                b' ' | b'\t' | b'\r' | b'\n' => Step::More,
                b'{' | b'[' => {
                    self.scan = Scan::Nested { depth: 1 };
                    Step::More
                }
                b'"' => {
                    self.scan = Scan::InString {
                        depth: 0,
                        escaped: false,
                    };
                    Step::More
                }
                b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                    self.scan = Scan::Scalar;
                    Step::More
                }
                _ => Step::Undelimited(format!(
                    "unexpected {} where a JSON value must start",
                    describe(byte)
                )),
            },
            Scan::Nested { depth } => match byte {
                b'{' | b'[' if depth >= MAX_DEPTH => Step::Undelimited(format!(
                    "arrays and objects nested more than {MAX_DEPTH} deep"
                )),
                b'{' | b'[' => {
                    self.scan = Scan::Nested { depth: depth + 1 };
                    Step::More
                }
                b'}' | b']' if depth == 1 => Step::EndsHere,
                b'}' | b']' => {
                    self.scan = Scan::Nested { depth: depth - 1 };
                    Step::More
                }
                b'"' => {
                    self.scan = Scan::InString {
                        depth,
                        escaped: false,
                    };
                    Step::More
                }
                _ => Step::More,
            },
            Scan::InString { depth, escaped } => match byte {
                _ if escaped => {
                    self.scan = Scan::InString {
                        depth,
                        escaped: false,
                    };
                    Step::More
                }
                b'\\' => {
                    self.scan = Scan::InString {
                        depth,
                        escaped: true,
                    };
                    Step::More
                }
                b'"' if depth == 0 => Step::EndsHere,
                b'"' => {
                    self.scan = Scan::Nested { depth };
                    Step::More
                }
                0..=0x1f => Step::Undelimited(format!(
                    "{} inside a string (control characters must be escaped)",
                    describe(byte)
                )),
                _ => Step::More,
            },
            Scan::Scalar => match byte {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'+' | b'-' | b'.' => Step::More,
                _ => Step::EndedBefore,
            },
        }
    }

    /// Decodes the value `pending[start..scanned]` and consumes it.
    fn complete(&mut self, scalar: bool) -> Frame {
        let bytes = &self.pending[self.start..self.scanned];
        let result = serde_json::from_slice::<Value>(bytes);
        self.scan = Scan::Idle;
        self.start = self.scanned;
        match result {
            Ok(value) => Frame::Value(value),
            Err(e) => {
                // A bad bare word is junk, not a request: the rest of its line goes too.
                if scalar {
                    self.skipping_line = true;
                    self.skip_line();
                }
                Frame::Malformed(format!("JSON parse error: {e}"))
            }
        }
    }

    /// Reports input that cannot be delimited and drops it through the end of its line.
    fn undelimited(&mut self, reason: String) -> Frame {
        self.scan = Scan::Idle;
        self.start = self.scanned;
        self.skipping_line = true;
        self.skip_line();
        Frame::Malformed(reason)
    }

    /// Drops input through the next newline; returns whether it was found. The scan resumes
    /// after it.
    fn skip_line(&mut self) -> bool {
        match self.pending[self.scanned..]
            .iter()
            .position(|&b| b == b'\n')
        {
            Some(newline) => {
                self.scanned += newline + 1;
                self.start = self.scanned;
                self.skipping_line = false;
                true
            }
            None => {
                self.pending.clear();
                self.start = 0;
                self.scanned = 0;
                false
            }
        }
    }
}

/// The bytes that leave a string as it is: all but `"`, `\\` and control characters.
static STRING_QUIET: [bool; 256] = quiet_table(b"\"\\", true);
/// The bytes that leave nesting as it is, outside strings: all but brackets and `"`.
static NESTED_QUIET: [bool; 256] = quiet_table(b"{}[]\"", false);

/// A table of the bytes that are not in `loud` (nor control characters, if `controls_loud`).
const fn quiet_table(loud: &[u8], controls_loud: bool) -> [bool; 256] {
    let mut table = [true; 256];
    let mut i = 0;
    while i < loud.len() {
        table[loud[i] as usize] = false;
        i += 1;
    }
    if controls_loud {
        let mut c = 0;
        while c < 0x20 {
            table[c] = false;
            c += 1;
        }
    }
    table
}

/// A byte, for an error message.
fn describe(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("character '{}'", byte as char)
    } else {
        format!("byte 0x{byte:02x}")
    }
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
    fn a_multiline_value_with_an_error_is_dropped_alone() {
        let mut stream = JsonStream::default();
        stream.push(b"{\n\"a\":\n nope,\n}\n{\"b\":1}\n");
        let frames = drain(&mut stream);
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert!(matches!(&frames[0], Frame::Malformed(_)), "{frames:?}");
        assert_eq!(frames[1], Frame::Value(json!({"b": 1})));
    }

    #[test]
    fn brackets_and_escaped_quotes_inside_strings_do_not_count() {
        let mut stream = JsonStream::default();
        stream.push(br#"{"a":"}]{[\"}", "b\\":["\\"]}"top" -1.5e3 true"#);
        stream.push(b" null\n");
        assert_eq!(
            drain(&mut stream),
            vec![
                Frame::Value(json!({"a": "}]{[\"}", "b\\": ["\\"]})),
                Frame::Value(json!("top")),
                Frame::Value(json!(-1500.0)),
                Frame::Value(json!(true)),
                Frame::Value(json!(null)),
            ]
        );
        assert_eq!(stream.pending_len(), 0);
    }

    /// Feeds `line` in `piece`-byte pushes, then a newline and a good value: exactly one
    /// error, then the value.
    fn one_error_then_the_next_line(line: &[u8], piece: usize) -> String {
        let mut stream = JsonStream::default();
        let mut frames = Vec::new();
        for chunk in line.chunks(piece) {
            stream.push(chunk);
            frames.extend(drain(&mut stream));
            assert!(stream.pending.len() <= MAX_PENDING + piece);
        }
        stream.push(b"\r\n{\"next\":1}");
        frames.extend(drain(&mut stream));
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[1], Frame::Value(json!({"next": 1})));
        match &frames[0] {
            Frame::Malformed(reason) => reason.clone(),
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn undelimited_input_costs_one_error_however_many_reads_its_line_takes() {
        let reason = one_error_then_the_next_line(&vec![b'['; 600 << 10], 4096);
        assert!(reason.contains("nested more than 128"), "{reason}");
        let reason = one_error_then_the_next_line(&b"{\"a\":".repeat(100_000), 4096);
        assert!(reason.contains("nested more than 128"), "{reason}");
        let reason = one_error_then_the_next_line(&vec![b'}'; 100_000], 1000);
        assert!(reason.contains("unexpected character '}'"), "{reason}");
        let reason = one_error_then_the_next_line(b"hello, world", 1);
        assert!(reason.contains("unexpected character 'h'"), "{reason}");
        let reason = one_error_then_the_next_line(b"truth or dare", 3);
        assert!(reason.starts_with("JSON parse error"), "{reason}");
        let mut long = b"{\"a\":\"".to_vec();
        long.resize(3 << 20, b'x');
        let reason = one_error_then_the_next_line(&long, 4096);
        assert!(reason.contains("too long"), "{reason}");
    }

    #[test]
    fn stray_closers_after_a_value_cost_one_error() {
        let mut stream = JsonStream::default();
        stream.push(b"{\"a\":1}}}");
        stream.push(b"}}]]{\"lost\":1}\n{\"b\":2}");
        let frames = drain(&mut stream);
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert_eq!(frames[0], Frame::Value(json!({"a": 1})));
        assert!(matches!(&frames[1], Frame::Malformed(m) if m.contains("'}'")));
        assert_eq!(frames[2], Frame::Value(json!({"b": 2})));
    }

    #[test]
    fn a_raw_newline_inside_a_string_ends_the_bad_line_there() {
        let mut stream = JsonStream::default();
        stream.push(b"{\"execute\":\"sto\n{\"execute\":\"cont\"}\n");
        let frames = drain(&mut stream);
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert!(matches!(&frames[0], Frame::Malformed(m) if m.contains("byte 0x0a")));
        assert_eq!(frames[1], Frame::Value(json!({"execute": "cont"})));
    }

    #[test]
    fn a_value_just_within_the_limits_is_accepted() {
        let mut stream = JsonStream::default();
        let mut nested = vec![b'['; MAX_DEPTH - 1];
        nested.extend(vec![b']'; MAX_DEPTH - 1]);
        stream.push(&nested);
        assert!(matches!(drain(&mut stream).as_slice(), [Frame::Value(_)]));
        let mut long = b"\"".to_vec();
        long.resize(MAX_PENDING - 1, b'a');
        for chunk in long.chunks(4096) {
            stream.push(chunk);
            assert!(drain(&mut stream).is_empty());
        }
        stream.push(b"\"");
        assert!(
            matches!(drain(&mut stream).as_slice(), [Frame::Value(Value::String(s))] if s.len() == MAX_PENDING - 2)
        );
        assert_eq!(stream.pending_len(), 0);
        stream.push(b"{}");
        assert!(stream.pending.capacity() < 4096, "the long buffer was kept");
        assert!(matches!(drain(&mut stream).as_slice(), [Frame::Value(_)]));
        // One byte more is too long.
        long.push(b'a');
        stream.push(&long);
        stream.push(b"\"\n");
        assert!(
            matches!(drain(&mut stream).as_slice(), [Frame::Malformed(m)] if m.contains("too long"))
        );
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
}
