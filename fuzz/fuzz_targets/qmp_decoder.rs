//! The QMP decoder (`JsonStream`): how a client's byte stream is cut into requests.
//!
//! Input: one byte that chooses how the stream is split into reads, then the stream.
//!
//! Checked: nothing panics; the frames do not depend on how the stream is split (one read,
//! byte by byte, or reads of varying size); a stream that serde_json reads as a sequence of
//! values (and that ends in whitespace, so a trailing number is complete) gives exactly those
//! values; buffering stays within the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use machine_manager::qmp::fuzzing::{Frame, JsonStream};
use serde_json::Value;

/// Decodes `input` pushed in reads of the sizes `sizes` yields.
fn decode(input: &[u8], mut sizes: impl FnMut() -> usize) -> Vec<Frame> {
    let mut stream = JsonStream::default();
    let mut frames = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = sizes().clamp(1, rest.len());
        stream.push(&rest[..n]);
        rest = &rest[n..];
        while let Some(frame) = stream.next_frame() {
            frames.push(frame);
        }
        assert!(stream.pending_len() <= input.len());
    }
    frames
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let whole = decode(input, || usize::MAX);
    assert!(whole.len() <= input.len());
    let bytewise = decode(input, || 1);
    assert_eq!(whole, bytewise, "byte by byte");
    let mut state = u32::from(seed) | 1;
    let varied = decode(input, || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (state >> 16) as usize % 64 + 1
    });
    assert_eq!(whole, varied, "reads of varying size");

    let complete = input.last().is_none_or(u8::is_ascii_whitespace);
    let reference: Result<Vec<Value>, _> = serde_json::Deserializer::from_slice(input)
        .into_iter::<Value>()
        .collect();
    if let (true, Ok(values)) = (complete, reference) {
        let expected: Vec<Frame> = values.into_iter().map(Frame::Value).collect();
        assert_eq!(whole, expected, "what serde_json reads");
    }
});
