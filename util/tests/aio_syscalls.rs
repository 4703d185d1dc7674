//! "One system call per batch" checked from the outside: the test re-runs itself under
//! `strace -c` and counts `io_submit` (aio=native) and `io_uring_enter` (aio=io_uring).
//!
//! The child submits `BATCHES` batches of `DEPTH` requests, each after the previous one has
//! completed, and waits on the engine's eventfd with poll(2): reaping must not enter the
//! kernel, so the count is exactly `BATCHES`.

mod aio_common;

use std::process::Command;

use aio_common::*;
use util::aio::{AioEngine, AioOpcode};

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

/// Runs this test binary's child mode for `engine` under strace; returns the call count of
/// `syscall`.
fn count_under_strace(engine: AioEngine, syscall: &str) -> u64 {
    let exe = std::env::current_exe().expect("test executable");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-c", "-e"])
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
    let summary = String::from_utf8_lossy(&out.stderr);
    summary
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.last() == Some(&syscall) && f.len() >= 5)
        .map(|f| f[3].parse().expect("calls column"))
        .unwrap_or_else(|| panic!("no {syscall} line in strace summary:\n{summary}"))
}

#[test]
fn one_system_call_per_batch() {
    if let Ok(name) = std::env::var(CHILD) {
        child(name.parse().expect("engine name"));
        return;
    }
    assert_eq!(
        count_under_strace(AioEngine::Native, "io_submit"),
        BATCHES as u64
    );
    assert_eq!(
        count_under_strace(AioEngine::IoUring, "io_uring_enter"),
        BATCHES as u64
    );
}
