//! Engines and threads: an engine may be created on one thread and used on another (the VMM
//! opens a drive on its main thread and serves it on an iothread); once used, an io_uring ring
//! belongs to that thread, refuses every call from another one with a clear error and loses
//! nothing; and a ring torn down on the wrong thread, unable to drain, leaks what keeps its
//! requests' buffers mapped instead of releasing it.

mod aio_common;

use std::sync::Arc;
use std::thread;

use aio_common::*;
use util::aio::{AioContext, AioEngine, AioError, AioOpcode, AioRequest, KeepAlive};
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

fn refused_as_wrong_thread<T: std::fmt::Debug>(result: Result<T, AioError>, call: &str) {
    match result {
        Err(AioError::WrongThread { engine }) => assert_eq!(engine, AioEngine::IoUring),
        other => panic!("{call} from another thread: expected WrongThread, got {other:?}"),
    }
}

#[test]
fn engines_created_on_one_thread_serve_another() {
    for engine in AioEngine::ALL {
        for mode in [Mode::Direct, Mode::ShmDirect] {
            let path = path_for(&format!("threads-handover-{engine}"), mode);
            let file = create_file(&path, &vec![0u8; DEPTH * ALIGN], mode);
            let mut ctx = open(engine, &file, DEPTH as u32);
            let mut buf = AlignedBuf::new(DEPTH * ALIGN);
            // Registered where the engine was created, used where it is served.
            let region = buf.iovec(0, DEPTH * ALIGN);
            ctx.register_memory(&[region]).expect("register_memory");
            (ctx, buf) = thread::spawn(move || {
                for fill in [0x5a, 0xa5, 0x3c] {
                    write_and_check(ctx.as_mut(), &mut buf, fill);
                }
                (ctx, buf)
            })
            .join()
            .expect("engine thread");
            assert!(file_content(&path).iter().all(|&b| b == 0x3c));
            if engine != AioEngine::IoUring {
                // Engines without a thread of their own keep working anywhere.
                write_and_check(ctx.as_mut(), &mut buf, 0x11);
            }
            drop(ctx);
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[test]
fn a_used_ring_belongs_to_its_thread_and_refuses_others_losing_nothing() {
    if !single_issuer_rings() {
        eprintln!("skipped: this kernel has no single-issuer io_uring rings");
        return;
    }
    let path = path_for("threads-owner", Mode::ShmDirect);
    let file = create_file(&path, &vec![0u8; DEPTH * ALIGN], Mode::ShmDirect);
    let mut buf = AlignedBuf::new(DEPTH * ALIGN);
    buf.as_mut_slice().fill(0x77);
    let buf = Arc::new(buf);
    let ctx = open(AioEngine::IoUring, &file, DEPTH as u32);
    let (owner, back) = std::sync::mpsc::channel::<Box<dyn AioContext>>();
    let (give, take) = std::sync::mpsc::channel::<Box<dyn AioContext>>();
    let writes = every_block(AioOpcode::Write, &buf);
    let owner_thread = thread::spawn(move || {
        let mut ctx = ctx;
        let mut batch = writes;
        // SAFETY: `buf` is kept alive by the test until every request was drained below.
        unsafe { ctx.submit(&mut batch) }.expect("submit on the ring's thread");
        owner.send(ctx).unwrap();
        // The ring comes back after the other thread tried it; its requests are still there.
        let mut ctx = take.recv().unwrap();
        let mut out = Vec::new();
        ctx.drain(&mut out).expect("drain on the ring's own thread");
        assert_eq!(out.len(), DEPTH);
        assert!(out.iter().all(|c| c.result == ALIGN as i64));
        ctx
    });
    let mut ctx = back.recv().unwrap();
    let in_flight = ctx.in_flight();
    assert_eq!(in_flight, DEPTH);
    let mut batch = every_block(AioOpcode::Read, &buf);
    // SAFETY: the call is refused before it takes the batch (asserted below).
    refused_as_wrong_thread(unsafe { ctx.submit(&mut batch) }, "submit");
    assert_eq!(batch.len(), DEPTH, "a refused batch stays with the caller");
    let mut out = Vec::new();
    refused_as_wrong_thread(ctx.reap(&mut out), "reap");
    refused_as_wrong_thread(ctx.drain(&mut out), "drain");
    refused_as_wrong_thread(
        ctx.register_memory(&[buf.iovec(0, ALIGN)]),
        "register_memory",
    );
    assert!(out.is_empty());
    assert_eq!(ctx.in_flight(), in_flight, "nothing was lost");
    give.send(ctx).unwrap();
    let ctx = owner_thread.join().expect("owner thread");
    assert_eq!(ctx.in_flight(), 0);
    drop(ctx);
    assert!(file_content(&path).iter().all(|&b| b == 0x77));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_ring_dropped_where_it_cannot_drain_leaks_its_buffers_owner() {
    if !single_issuer_rings() {
        eprintln!("skipped: this kernel has no single-issuer io_uring rings");
        return;
    }
    let path = path_for("threads-abandon", Mode::ShmDirect);
    let file = create_file(&path, &vec![0u8; DEPTH * ALIGN], Mode::ShmDirect);
    let buf = Arc::new(AlignedBuf::new(DEPTH * ALIGN));
    let mut ctx = open(AioEngine::IoUring, &file, DEPTH as u32);
    let mut batch = every_block(AioOpcode::Read, &buf);
    for req in &mut batch {
        req.keep_alive = Some(KeepAlive::new(buf.clone()));
    }
    let mut ctx = thread::spawn(move || {
        // SAFETY: every request holds `buf` alive until the engine hands it back, and an
        // engine that cannot drain never releases it.
        unsafe { ctx.submit(&mut batch) }.expect("submit");
        ctx
    })
    .join()
    .expect("ring thread");
    // The ring's thread has ended; its requests still belong to the ring.
    assert_eq!(ctx.in_flight(), DEPTH);
    refused_as_wrong_thread(ctx.drain(&mut Vec::new()), "drain");
    drop(ctx);
    assert_eq!(
        Arc::strong_count(&buf),
        1 + DEPTH,
        "every abandoned request keeps its buffer alive"
    );
    drop(file);
    let _ = std::fs::remove_file(&path);
}
