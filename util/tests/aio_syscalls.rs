//! "One system call per batch" checked from the outside: the test re-runs itself under
//! `strace` and counts `io_submit` (aio=native) and `io_uring_enter` (aio=io_uring).
//!
//! The child submits `BATCHES` batches of `DEPTH` requests, each after the previous one has
//! completed, and waits on the engine's eventfd with poll(2). A native batch is one
//! `io_submit`. An io_uring batch is one `io_uring_enter` that submits, plus, on a kernel that
//! defers completions to the ring's thread (`IORING_SETUP_DEFER_TASKRUN`, Linux 6.1), one
//! call per eventfd wake-up that posts every completion ready by then; without deferral
//! reaping never enters the kernel.

mod aio_common;

use std::process::Command;

use aio_common::*;
use util::aio::{AioEngine, AioOpcode};
use util::io_uring::sys::{IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SINGLE_ISSUER};
use util::io_uring::IoUring;

const BATCHES: usize = 10;
const DEPTH: usize = 8;
const CHILD: &str = "AIO_SYSCALLS_CHILD";

fn child(engine: AioEngine) {
    let path = test_path(&format!("syscalls-{engine}"));
    let file = create_file(&path, &vec![1u8; DEPTH * ALIGN], Mode::Direct);
    let mut ctx = open(engine, &file, DEPTH as u32);
    let buf = AlignedBuf::new(DEPTH * ALIGN);
    for round in 0..BATCHES {
        let op = if round % 2 == 0 {
            AioOpcode::Read
        } else {
            AioOpcode::Write
        };
        let batch = (0..DEPTH)
            .map(|i| {
                rw(
                    op,
                    (i * ALIGN) as u64,
                    vec![buf.iovec(i * ALIGN, ALIGN)],
                    i as u64,
                )
            })
            .collect();
        let done = run_batch(ctx.as_mut(), batch);
        assert!(done.iter().all(|c| c.result == ALIGN as i64));
    }
    drop(ctx);
    let _ = std::fs::remove_file(&path);
}

/// Runs this test binary's child mode for `engine` under strace; returns the argument lists
/// of its `syscall` calls (the text between the parentheses).
fn trace_calls(engine: AioEngine, syscall: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("test executable");
    let log = test_path(&format!("strace-{engine}"));
    let out = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&log)
        .arg("-e")
        .arg(format!("trace={syscall}"))
        .arg(&exe)
        .args(["--exact", "one_system_call_per_batch", "--test-threads=1"])
        .env(CHILD, engine.as_str())
        .output()
        .expect("strace is part of the test host (see shared/HOST.md tooling)");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).expect("strace output");
    let _ = std::fs::remove_file(&log);
    let call = format!("{syscall}(");
    text.lines()
        .filter_map(|l| l.split_once(&call))
        .map(|(_, rest)| rest.split(')').next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn one_system_call_per_batch() {
    if let Ok(name) = std::env::var(CHILD) {
        child(name.parse().expect("engine name"));
        return;
    }
    assert_eq!(trace_calls(AioEngine::Native, "io_submit").len(), BATCHES);

    // io_uring_enter(fd, to_submit, min_complete, flags, ...): the calls that submit, and
    // the calls that only post completions.
    let enters = trace_calls(AioEngine::IoUring, "io_uring_enter");
    let to_submit = |args: &String| -> u32 {
        let field = args.split(',').nth(1).unwrap_or("").trim();
        field
            .parse()
            .unwrap_or_else(|_| panic!("io_uring_enter({args})"))
    };
    let submits = enters.iter().filter(|a| to_submit(a) > 0).count();
    let reaps = enters.len() - submits;
    assert_eq!(submits, BATCHES, "{enters:#?}");
    let defers = IoUring::new(4, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN).is_ok();
    if defers {
        // One call per eventfd wake-up: at least one per batch, never one per request.
        assert!(
            (BATCHES..BATCHES * DEPTH).contains(&reaps),
            "{reaps} reaping calls for {BATCHES} batches of {DEPTH}"
        );
    } else {
        assert_eq!(reaps, 0, "{enters:#?}");
    }
}
