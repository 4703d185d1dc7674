//! Engines and threads: an engine moves between threads while it is idle (an io_uring ring
//! bound to one thread is set up again for the next), registered buffers move with it, and
//! a single-issuer ring with requests in it refuses calls from another thread with a clear
//! error, losing nothing: its own thread then drains every request.

mod aio_common;

use std::thread;

use aio_common::*;
use util::aio::{AioContext, AioEngine, AioError, AioOpcode, AioRequest};
use util::io_uring::sys::{IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SINGLE_ISSUER};
use util::io_uring::IoUring;

const DEPTH: usize = 8;

/// Whether this kernel gives the engine a single-issuer ring.
fn single_issuer_rings() -> bool {
    IoUring::new(4, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN).is_ok()
}

/// One 4 KiB `opcode` request per block of the file, each on its own block of `buf`.
fn every_block(opcode: AioOpcode, buf: &AlignedBuf) -> Vec<AioRequest> {
    (0..DEPTH)
        .map(|i| {
            let at = i * ALIGN;
            rw(opcode, at as u64, vec![buf.iovec(at, ALIGN)], i as u64)
        })
        .collect()
}

/// Writes `fill` into every block with one batch, then reads them back and checks them.
fn write_and_check(ctx: &mut dyn AioContext, buf: &mut AlignedBuf, fill: u8) {
    buf.as_mut_slice().fill(fill);
    let done = run_batch(ctx, every_block(AioOpcode::Write, buf));
    assert!(done.iter().all(|c| c.result == ALIGN as i64));
    buf.as_mut_slice().fill(0);
    let done = run_batch(ctx, every_block(AioOpcode::Read, buf));
    assert!(done.iter().all(|c| c.result == ALIGN as i64));
    assert!(buf.as_slice().iter().all(|&b| b == fill), "fill {fill:#x}");
}

#[test]
fn idle_engines_move_between_threads() {
    for engine in [AioEngine::Off, AioEngine::Native, AioEngine::IoUring] {
        for mode in [Mode::Direct, Mode::ShmDirect] {
            let path = path_for(&format!("threads-move-{engine}"), mode);
            let file = create_file(&path, &vec![0u8; DEPTH * ALIGN], mode);
            let mut ctx = open(engine, &file, DEPTH as u32);
            let mut buf = AlignedBuf::new(DEPTH * ALIGN);
            // Registered on the first thread, used from three.
            let region = buf.iovec(0, DEPTH * ALIGN);
            ctx.register_memory(&[region]).expect("register_memory");
            for fill in [0x5a, 0xa5, 0x3c] {
                (ctx, buf) = thread::spawn(move || {
                    write_and_check(ctx.as_mut(), &mut buf, fill);
                    (ctx, buf)
                })
                .join()
                .expect("engine thread");
            }
            write_and_check(ctx.as_mut(), &mut buf, 0x11);
            drop(ctx);
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[test]
fn a_busy_ring_stays_with_its_thread_and_loses_nothing() {
    let path = path_for("threads-busy", Mode::ShmDirect);
    let file = create_file(&path, &vec![0u8; DEPTH * ALIGN], Mode::ShmDirect);
    let mut ctx = open(AioEngine::IoUring, &file, DEPTH as u32);
    let mut buf = AlignedBuf::new(DEPTH * ALIGN);
    buf.as_mut_slice().fill(0x77);
    let mut batch = every_block(AioOpcode::Write, &buf);
    // SAFETY: `buf` outlives every request: they are all drained below.
    unsafe { ctx.submit(&mut batch) }.expect("submit");
    wait_eventfd(ctx.as_ref());

    let (mut ctx, refused) = thread::spawn(move || {
        let mut out = Vec::new();
        let refused = ctx.drain(&mut out).err();
        (ctx, refused)
    })
    .join()
    .expect("other thread");
    if single_issuer_rings() {
        match refused {
            Some(AioError::Syscall { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EEXIST), "{source}")
            }
            other => panic!("a busy ring must refuse another thread, got {other:?}"),
        }
        assert_eq!(ctx.in_flight(), DEPTH, "nothing was lost");
        let mut out = Vec::new();
        ctx.drain(&mut out).expect("drain on the ring's own thread");
        assert_eq!(out.len(), DEPTH);
        assert!(out.iter().all(|c| c.result == ALIGN as i64));
    } else {
        assert!(refused.is_none(), "{refused:?}");
    }
    assert_eq!(ctx.in_flight(), 0);
    drop(ctx);
    assert!(file_content(&path).iter().all(|&b| b == 0x77));
    let _ = std::fs::remove_file(&path);
}
