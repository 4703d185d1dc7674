//! `AioContext::poll_ready`: what a polling event loop learns without a system call. For every
//! engine, on the disk (`O_DIRECT`, real asynchronous I/O) and on tmpfs (io_uring's deferred
//! completions): false with nothing finished, true once a request finished (found by
//! spinning on it alone, no reap in between), false again after the reap took it.

mod aio_common;

use std::time::{Duration, Instant};

use aio_common::*;
use util::aio::{AioContext, AioEngine, AioOpcode};

/// Liveness bound only: a finished request is normally seen within microseconds.
const PATIENCE: Duration = Duration::from_secs(20);

fn spin_until_ready(ctx: &dyn AioContext) -> bool {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if ctx.poll_ready() {
            return true;
        }
        std::hint::spin_loop();
    }
    false
}

fn poll_ready_tracks_completions(engine: AioEngine, mode: Mode) {
    const ROUNDS: usize = 50;
    let path = path_for(&format!("poll-ready-{engine}"), mode);
    let mut content = vec![0u8; 8 * ALIGN];
    Rng::new(7).fill(&mut content);
    let file = create_file(&path, &content, mode);
    let mut ctx = open(engine, &file, 4);
    let buf = AlignedBuf::new(ALIGN);
    assert!(!ctx.poll_ready(), "{engine}: ready before any request");
    for round in 0..ROUNDS {
        let block = round % 8;
        let mut batch = vec![rw(
            AioOpcode::Read,
            (block * ALIGN) as u64,
            vec![buf.iovec(0, ALIGN)],
            round as u64,
        )];
        // SAFETY: `buf` outlives the engine's use of it (reaped below).
        unsafe { ctx.submit(&mut batch) }.expect("submit");
        assert!(
            spin_until_ready(ctx.as_ref()),
            "{engine} {mode:?}: a finished read never showed in poll_ready"
        );
        let mut out = Vec::new();
        while out.is_empty() {
            ctx.reap(&mut out).expect("reap");
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].tag, round as u64);
        assert_eq!(out[0].result, ALIGN as i64);
        assert_eq!(buf.as_slice(), &content[block * ALIGN..(block + 1) * ALIGN]);
        assert!(
            !ctx.poll_ready(),
            "{engine} {mode:?}: still ready after the reap"
        );
    }
    drop(ctx);
    let _ = std::fs::remove_file(&path);
}

macro_rules! engine_tests {
    ($($name:ident: $engine:expr, $mode:expr;)*) => {
        $(
            #[test]
            fn $name() {
                poll_ready_tracks_completions($engine, $mode);
            }
        )*
    };
}

engine_tests! {
    off_direct: AioEngine::Off, Mode::Direct;
    threads_direct: AioEngine::Threads, Mode::Direct;
    threads_shm: AioEngine::Threads, Mode::ShmDirect;
    native_direct: AioEngine::Native, Mode::Direct;
    native_shm: AioEngine::Native, Mode::ShmDirect;
    io_uring_direct: AioEngine::IoUring, Mode::Direct;
    io_uring_shm: AioEngine::IoUring, Mode::ShmDirect;
}
