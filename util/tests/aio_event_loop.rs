//! The engines' single completion path, driven by the project's event loop: the engine's
//! eventfd is registered as a named handler which reaps completions and submits the next
//! batch, as the virtio-blk device does.

mod aio_common;

use std::sync::{Arc, Mutex};

use aio_common::*;
use util::aio::{AioContext, AioEngine, AioOpcode, AioRequest};
use util::event_loop::{EventLoop, HandlerAction};
use vmm_sys_util::epoll::EventSet;

const BATCHES: usize = 20;
const PER_BATCH: usize = 16;

/// Round `round`: every block of the file rewritten from `src`, one request per block.
fn batch(src: &AlignedBuf, round: usize) -> Vec<AioRequest> {
    (0..PER_BATCH)
        .map(|i| {
            let iov = vec![src.iovec(i * ALIGN, ALIGN)];
            rw(
                AioOpcode::Write,
                (i * ALIGN) as u64,
                iov,
                (round * PER_BATCH + i) as u64,
            )
        })
        .collect()
}

fn event_loop_drives(engine: AioEngine) {
    let path = test_path(&format!("loop-{engine}"));
    let file = create_file(&path, &vec![0u8; PER_BATCH * ALIGN], Mode::Direct);
    let mut src = AlignedBuf::new(PER_BATCH * ALIGN);
    Rng::new(3).fill(src.as_mut_slice());
    let src = Arc::new(src);
    let ctx: Arc<Mutex<Box<dyn AioContext>>> = Arc::new(Mutex::new(open(engine, &file, 4)));
    let event_loop = EventLoop::new().expect("event loop");
    let fd = ctx.lock().expect("lock").eventfd();
    let completed = Arc::new(Mutex::new(Vec::new()));
    {
        let (ctx, completed, event_loop2) = (ctx.clone(), completed.clone(), event_loop.clone());
        let src = src.clone();
        let mut round = 1;
        let handler = Box::new(move |_events: EventSet| {
            let mut ctx = ctx.lock().expect("lock");
            let mut out = Vec::new();
            ctx.reap(&mut out).expect("reap");
            let mut completed = completed.lock().expect("lock");
            completed.extend(out);
            if ctx.in_flight() == 0 && round < BATCHES {
                let mut next = batch(&src, round);
                round += 1;
                // SAFETY: `src` is kept alive by the closure until the loop ends.
                unsafe { ctx.submit(&mut next) }.expect("submit");
            }
            if completed.len() == BATCHES * PER_BATCH {
                event_loop2.stop();
            }
            HandlerAction::Keep
        });
        event_loop
            .add("blk0-aio", fd, EventSet::IN, handler)
            .expect("add");
    }
    let mut first = batch(&src, 0);
    // SAFETY: `src` outlives the engine.
    unsafe { ctx.lock().expect("lock").submit(&mut first) }.expect("submit");
    while event_loop.run_once(10_000).expect("run") {}
    let mut tags: Vec<u64> = completed
        .lock()
        .expect("lock")
        .iter()
        .map(|c| c.tag)
        .collect();
    tags.sort();
    assert_eq!(tags, (0..(BATCHES * PER_BATCH) as u64).collect::<Vec<_>>());
    assert!(completed
        .lock()
        .expect("lock")
        .iter()
        .all(|c| c.result == ALIGN as i64));
    event_loop.remove(fd).expect("remove");
    drop(ctx);
    assert!(file_content(&path) == src.as_slice());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn off_completes_through_the_event_loop() {
    event_loop_drives(AioEngine::Off);
}

#[test]
fn threads_completes_through_the_event_loop() {
    event_loop_drives(AioEngine::Threads);
}

#[test]
fn native_completes_through_the_event_loop() {
    event_loop_drives(AioEngine::Native);
}

#[test]
fn io_uring_completes_through_the_event_loop() {
    event_loop_drives(AioEngine::IoUring);
}
