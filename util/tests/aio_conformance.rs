//! One conformance suite, run unchanged against `aio=off`, `aio=threads`, `aio=native` and
//! `aio=io_uring`, on real files, buffered and O_DIRECT.
//!
//! Every check goes through the public contract only: `open_engine`, `submit`, the eventfd
//! becoming readable, `reap`/`drain`. Data is checked byte for byte against a reference model
//! of the file and, at the end, against the file read back through the page cache.

mod aio_common;

use aio_common::*;
use util::aio::{AioCompletion, AioEngine, AioOpcode, AioRequest, Iovec};

const FILE_SIZE: usize = 4 << 20;
/// Requests of one batch use distinct chunks, so their order inside the batch does not matter.
const CHUNK: usize = 64 << 10;

/// Random offset granularity: any byte when buffered, whole sectors with O_DIRECT.
fn grain(mode: Mode) -> usize {
    if mode.direct() {
        512
    } else {
        1
    }
}

/// Splits `len` bytes at `buf[start..]` into 1 to 4 iovecs whose lengths are multiples of `g`.
fn split_iovecs(rng: &mut Rng, buf: &AlignedBuf, start: usize, len: usize, g: usize) -> Vec<Iovec> {
    let pieces = 1 + rng.below(4) as usize;
    let mut iovecs = Vec::new();
    let mut at = 0;
    for i in 0..pieces {
        let left = len - at;
        if left == 0 {
            break;
        }
        let take = if i + 1 == pieces {
            left
        } else {
            (g * (1 + rng.below((left / g) as u64) as usize)).min(left)
        };
        iovecs.push(buf.iovec(start + at, take));
        at += take;
    }
    iovecs
}

/// Random batches of reads, writes and flushes, some larger than the engine's depth; every
/// read is compared with the model, every result with the request's length.
fn random_mix(engine: AioEngine, mode: Mode) {
    let mut rng = Rng::new(0x5eed ^ (engine as u64 * 31 + mode as u64));
    let mut model = vec![0u8; FILE_SIZE];
    rng.fill(&mut model);
    let path = path_for(&format!("mix-{engine}"), mode);
    let file = create_file(&path, &model, mode);
    let depth = 8;
    let mut ctx = open(engine, &file, depth);
    let g = grain(mode);
    let chunks = FILE_SIZE / CHUNK;
    for round in 0..40 {
        let n = 1 + rng.below(3 * u64::from(depth)) as usize;
        let mut order: Vec<usize> = (0..chunks).collect();
        for i in 0..n.min(chunks) {
            let j = i + rng.below((chunks - i) as u64) as usize;
            order.swap(i, j);
        }
        let mut bufs = Vec::new();
        let mut batch = Vec::new();
        // (tag, opcode, file offset, len, buffer index)
        let mut expect = Vec::new();
        for (i, &chunk) in order.iter().take(n).enumerate() {
            let tag = (round * 1000 + i) as u64;
            let kind = rng.below(10);
            if kind == 0 {
                batch.push(ranged(AioOpcode::Flush, 0, 0, tag));
                expect.push((tag, AioOpcode::Flush, 0, 0, usize::MAX));
                continue;
            }
            let len = g * (1 + rng.below((CHUNK / 2 / g) as u64) as usize);
            let off = chunk * CHUNK + g * rng.below(((CHUNK - len) / g) as u64) as usize;
            let mut buf = AlignedBuf::new(len);
            let opcode = if kind < 5 {
                AioOpcode::Read
            } else {
                AioOpcode::Write
            };
            if opcode == AioOpcode::Write {
                rng.fill(buf.as_mut_slice());
                model[off..off + len].copy_from_slice(buf.as_slice());
            }
            batch.push(rw(
                opcode,
                off as u64,
                split_iovecs(&mut rng, &buf, 0, len, g),
                tag,
            ));
            expect.push((tag, opcode, off, len, bufs.len()));
            bufs.push(buf);
        }
        let done = run_batch(ctx.as_mut(), batch);
        assert_eq!(ctx.in_flight(), 0);
        for ((tag, opcode, off, len, b), c) in expect.iter().zip(&done) {
            assert_eq!(c.tag, *tag);
            assert_eq!(
                c.result, *len as i64,
                "aio={engine} {mode:?} {opcode:?} at {off}"
            );
            if *opcode == AioOpcode::Read {
                assert!(
                    bufs[*b].as_slice() == &model[*off..*off + *len],
                    "aio={engine} {mode:?}: read at {off} len {len} differs from the model"
                );
            }
        }
    }
    drop(ctx);
    assert!(file_content(&path) == model, "file differs from the model");
    let _ = std::fs::remove_file(&path);
}

/// 300 writes then 300 reads against a depth of 4: the engine queues what does not fit and
/// resumes after completions; every request completes exactly once.
fn batch_larger_than_ring(engine: AioEngine, mode: Mode) {
    const N: usize = 300;
    let path = path_for(&format!("big-{engine}"), mode);
    let file = create_file(&path, &vec![0u8; N * ALIGN], mode);
    let mut ctx = open(engine, &file, 4);
    let mut src = AlignedBuf::new(N * ALIGN);
    Rng::new(42).fill(src.as_mut_slice());
    let writes = (0..N)
        .map(|i| {
            rw(
                AioOpcode::Write,
                (i * ALIGN) as u64,
                vec![src.iovec(i * ALIGN, ALIGN)],
                i as u64,
            )
        })
        .collect();
    let done = run_batch(ctx.as_mut(), writes);
    assert!(done
        .iter()
        .enumerate()
        .all(|(i, c)| c.tag == i as u64 && c.result == ALIGN as i64));
    let dst = AlignedBuf::new(N * ALIGN);
    let reads: Vec<AioRequest> = (0..N)
        .map(|i| {
            rw(
                AioOpcode::Read,
                (i * ALIGN) as u64,
                vec![dst.iovec(i * ALIGN, ALIGN)],
                i as u64,
            )
        })
        .collect();
    let mut reads = reads;
    // SAFETY: `dst` outlives the drain below.
    unsafe { ctx.submit(&mut reads) }.expect("submit");
    assert_eq!(ctx.in_flight(), N, "queued requests count as in flight");
    let mut out = Vec::new();
    ctx.drain(&mut out).expect("drain");
    assert_eq!(out.len(), N);
    assert_eq!(ctx.in_flight(), 0);
    assert!(out.iter().all(|c| c.result == ALIGN as i64));
    assert!(dst.as_slice() == src.as_slice());
    let _ = std::fs::remove_file(&path);
}

/// The documented choice for misaligned O_DIRECT requests: passed to the kernel unchanged and
/// its answer is the completion. On the disk (ext4) that is `-EINVAL`, and the engine stays
/// usable; tmpfs has no alignment rule, so the same requests succeed with correct data.
fn misaligned_direct_passes_through(engine: AioEngine, mode: Mode) {
    let path = path_for(&format!("misaligned-{engine}"), mode);
    let file = create_file(&path, &vec![7u8; 4 * ALIGN], mode);
    let mut ctx = open(engine, &file, 4);
    let mut buf = AlignedBuf::new(4 * ALIGN);
    buf.as_mut_slice()[3 * ALIGN..].fill(8);
    let batch = vec![
        rw(AioOpcode::Read, 1, vec![buf.iovec(0, ALIGN)], 0),
        rw(AioOpcode::Read, 0, vec![buf.iovec(ALIGN + 1, ALIGN)], 1),
        rw(
            AioOpcode::Write,
            2 * ALIGN as u64,
            vec![buf.iovec(3 * ALIGN, 100)],
            2,
        ),
        rw(AioOpcode::Read, 0, vec![buf.iovec(0, ALIGN)], 3),
    ];
    let done = run_batch(ctx.as_mut(), batch);
    let results: Vec<i64> = done.iter().map(|c| c.result).collect();
    let mut content = vec![7u8; 4 * ALIGN];
    if mode == Mode::Direct {
        let einval = -i64::from(libc::EINVAL);
        assert_eq!(
            results,
            vec![einval, einval, einval, ALIGN as i64],
            "aio={engine}"
        );
    } else {
        assert_eq!(
            results,
            vec![ALIGN as i64, ALIGN as i64, 100, ALIGN as i64],
            "aio={engine}"
        );
        content[2 * ALIGN..2 * ALIGN + 100].fill(8);
        assert!(buf.as_slice()[ALIGN + 1..2 * ALIGN + 1]
            .iter()
            .all(|&b| b == 7));
    }
    assert!(buf.as_slice()[..ALIGN].iter().all(|&b| b == 7));
    drop(ctx);
    assert!(file_content(&path) == content);
    let _ = std::fs::remove_file(&path);
}

/// A read that crosses the end of the file completes with its full length, and the part
/// beyond the end reads as zeroes.
fn read_across_eof_zero_fills(engine: AioEngine, mode: Mode) {
    let tail = if mode.direct() { 512 } else { 1000 };
    let path = path_for(&format!("eof-{engine}"), mode);
    let file = create_file(&path, &vec![9u8; ALIGN + tail], mode);
    let mut ctx = open(engine, &file, 4);
    let mut buf = AlignedBuf::new(3 * ALIGN);
    buf.as_mut_slice().fill(0xee);
    let batch = vec![
        rw(AioOpcode::Read, ALIGN as u64, vec![buf.iovec(0, ALIGN)], 0),
        rw(
            AioOpcode::Read,
            4 * ALIGN as u64,
            vec![buf.iovec(ALIGN, ALIGN)],
            1,
        ),
    ];
    let done = run_batch(ctx.as_mut(), batch);
    assert_eq!(done[0].result, ALIGN as i64, "aio={engine} {mode:?}");
    assert_eq!(done[1].result, ALIGN as i64, "aio={engine} {mode:?}");
    let got = buf.as_slice();
    assert!(got[..tail].iter().all(|&b| b == 9));
    assert!(got[tail..2 * ALIGN].iter().all(|&b| b == 0));
    assert!(
        got[2 * ALIGN..].iter().all(|&b| b == 0xee),
        "bytes beyond the request untouched"
    );
    let _ = std::fs::remove_file(&path);
}

/// Discard and write-zeroes make the range read as zeroes where the engine supports them,
/// and complete with `-EOPNOTSUPP` where it does not.
fn discard_and_write_zeroes(engine: AioEngine, mode: Mode) {
    let path = path_for(&format!("zeroes-{engine}"), mode);
    let file = create_file(&path, &vec![5u8; 8 * ALIGN], mode);
    let mut ctx = open(engine, &file, 4);
    let batch = vec![
        ranged(AioOpcode::Discard, ALIGN as u64, 2 * ALIGN as u64, 0),
        ranged(
            AioOpcode::WriteZeroes,
            4 * ALIGN as u64,
            2 * ALIGN as u64,
            1,
        ),
    ];
    let done = run_batch(ctx.as_mut(), batch);
    let buf = AlignedBuf::new(8 * ALIGN);
    let read = vec![rw(AioOpcode::Read, 0, vec![buf.iovec(0, 8 * ALIGN)], 2)];
    assert_eq!(run_batch(ctx.as_mut(), read)[0].result, 8 * ALIGN as i64);
    let got = buf.as_slice();
    for (c, start) in done.iter().zip([ALIGN, 4 * ALIGN]) {
        let opcode = if c.tag == 0 {
            AioOpcode::Discard
        } else {
            AioOpcode::WriteZeroes
        };
        if ctx.supports(opcode) {
            assert_eq!(c.result, 2 * ALIGN as i64, "aio={engine} {opcode:?}");
            assert!(got[start..start + 2 * ALIGN].iter().all(|&b| b == 0));
        } else {
            assert_eq!(c.result, -i64::from(libc::EOPNOTSUPP));
            assert!(got[start..start + 2 * ALIGN].iter().all(|&b| b == 5));
        }
    }
    assert!(got[..ALIGN]
        .iter()
        .chain(&got[3 * ALIGN..4 * ALIGN])
        .all(|&b| b == 5));
    assert!(got[6 * ALIGN..].iter().all(|&b| b == 5));
    assert_eq!(
        file.metadata().expect("metadata").len(),
        8 * ALIGN as u64,
        "size kept"
    );
    let _ = std::fs::remove_file(&path);
}

/// Dropping an engine with requests in flight waits for them: the data is on disk afterwards.
fn drop_drains_in_flight(engine: AioEngine, mode: Mode) {
    const N: usize = 64;
    let path = path_for(&format!("drop-{engine}"), mode);
    let file = create_file(&path, &vec![0u8; N * ALIGN], mode);
    let mut ctx = open(engine, &file, 8);
    let mut src = AlignedBuf::new(N * ALIGN);
    Rng::new(7).fill(src.as_mut_slice());
    let mut batch: Vec<AioRequest> = (0..N)
        .map(|i| {
            rw(
                AioOpcode::Write,
                (i * ALIGN) as u64,
                vec![src.iovec(i * ALIGN, ALIGN)],
                i as u64,
            )
        })
        .collect();
    // SAFETY: `src` outlives `ctx`, whose drop waits for every request.
    unsafe { ctx.submit(&mut batch) }.expect("submit");
    drop(ctx);
    assert!(file_content(&path) == src.as_slice());
    let _ = std::fs::remove_file(&path);
}

/// Empty batches, zero-length transfers and offsets beyond what the kernel's signed offsets
/// express complete without touching the file; completions are signalled through the eventfd and counted as in flight until reaped.
fn trivial_requests(engine: AioEngine, mode: Mode) {
    let path = path_for(&format!("trivial-{engine}"), mode);
    let file = create_file(&path, &vec![1u8; ALIGN], mode);
    let mut ctx = open(engine, &file, 2);
    let mut empty = Vec::new();
    // SAFETY: no buffers.
    unsafe { ctx.submit(&mut empty) }.expect("empty submit");
    assert_eq!(ctx.in_flight(), 0);
    let buf = AlignedBuf::new(ALIGN);
    let done = run_batch(
        ctx.as_mut(),
        vec![
            rw(AioOpcode::Read, 0, Vec::new(), 10),
            rw(AioOpcode::Write, 0, Vec::new(), 11),
            ranged(AioOpcode::Flush, 0, 0, 12),
            rw(AioOpcode::Read, u64::MAX - 511, vec![buf.iovec(0, 512)], 13),
            rw(
                AioOpcode::Write,
                i64::MAX as u64,
                vec![buf.iovec(0, 512)],
                14,
            ),
        ],
    );
    let einval = -i64::from(libc::EINVAL);
    let expect = [(10, 0), (11, 0), (12, 0), (13, einval), (14, einval)]
        .map(|(tag, result)| AioCompletion { tag, result });
    assert_eq!(done, expect.to_vec());
    let mut out = Vec::new();
    assert_eq!(ctx.reap(&mut out).expect("reap"), 0, "nothing left");
    let _ = std::fs::remove_file(&path);
}

/// One module per check with one test per filesystem and open mode, e.g.
/// `io_uring::random_mix::tmpfs_direct`.
macro_rules! checks {
    ($engine:expr; $($check:ident: $($mode:ident),+;)+) => {
        $(
            mod $check {
                use super::*;
                $(
                    #[test]
                    #[allow(non_snake_case)]
                    fn $mode() {
                        super::super::$check($engine, Mode::$mode);
                    }
                )+
            }
        )+
    };
}

macro_rules! suite {
    ($name:ident, $engine:expr) => {
        mod $name {
            use super::*;

            checks! { $engine;
                random_mix: Buffered, Direct, ShmBuffered, ShmDirect;
                batch_larger_than_ring: Buffered, Direct, ShmBuffered, ShmDirect;
                misaligned_direct_passes_through: Direct, ShmDirect;
                read_across_eof_zero_fills: Buffered, Direct, ShmBuffered, ShmDirect;
                discard_and_write_zeroes: Buffered, Direct, ShmBuffered, ShmDirect;
                drop_drains_in_flight: Buffered, Direct, ShmBuffered, ShmDirect;
                trivial_requests: Buffered, Direct, ShmBuffered, ShmDirect;
            }
        }
    };
}

suite!(off, AioEngine::Off);
suite!(threads, AioEngine::Threads);
suite!(native, AioEngine::Native);
suite!(io_uring, AioEngine::IoUring);
