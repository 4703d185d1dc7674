//! `aio=threads` seen from the outside: the pool has `min(depth, 4)` threads named
//! `aio-worker-N`, gone once the engine is dropped; every system call that moves data runs on
//! one of them, never on the thread that submits (the test re-runs itself under `strace -f`);
//! requests beyond the workers wait in submission order; and dropping the engine with requests
//! queued finishes them before it releases what keeps their buffers mapped.

mod aio_common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;

use aio_common::*;
use util::aio::threads::{ThreadsContext, MAX_WORKERS, WORKER_NAME};
use util::aio::{AioContext, AioEngine, AioOpcode, AioRequest, KeepAlive};

const CHILD: &str = "AIO_POOL_CHILD";
const BLOCKS: usize = 16;
/// The system calls a request of each opcode makes.
const IO_CALLS: [&str; 4] = ["preadv", "pwritev", "fdatasync", "fallocate"];

/// The thread ids of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<i32> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = entry.expect("task entry").path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim_end().starts_with(prefix) {
            let tid = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            tids.push(tid.parse().expect("numeric tid"));
        }
    }
    tids
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// The child: opens pools of several sizes and counts their threads, then runs one of every
/// opcode on a pool of four and prints which threads are the submitter and the workers.
fn child() {
    let path = test_path("pool-child");
    let file = create_file(&path, &vec![1u8; BLOCKS * ALIGN], Mode::Direct);
    assert!(threads_named(WORKER_NAME).is_empty(), "no pool yet");
    for depth in [1, 3, 8, 256] {
        let ctx = open(AioEngine::Threads, &file, depth);
        let expect = (depth as usize).min(MAX_WORKERS);
        assert_eq!(threads_named(WORKER_NAME).len(), expect, "depth {depth}");
        drop(ctx);
        assert!(
            threads_named(WORKER_NAME).is_empty(),
            "depth {depth}: workers left after the drop"
        );
    }
    let mut ctx = open(AioEngine::Threads, &file, 8);
    println!("submitter {}", gettid());
    for tid in threads_named(WORKER_NAME) {
        println!("worker {tid}");
    }
    let buf = AlignedBuf::new(BLOCKS * ALIGN);
    for op in [AioOpcode::Write, AioOpcode::Read] {
        let batch = (0..BLOCKS)
            .map(|i| rw(op, (i * ALIGN) as u64, vec![buf.iovec(i * ALIGN, ALIGN)], 0))
            .collect();
        let done = run_batch(ctx.as_mut(), batch);
        assert!(done.iter().all(|c| c.result == ALIGN as i64), "{op:?}");
    }
    let batch = vec![
        ranged(AioOpcode::Flush, 0, 0, 0),
        ranged(AioOpcode::Discard, 0, ALIGN as u64, 1),
        ranged(AioOpcode::WriteZeroes, ALIGN as u64, ALIGN as u64, 2),
    ];
    let done = run_batch(ctx.as_mut(), batch);
    assert_eq!(
        done.iter().map(|c| c.result).collect::<Vec<_>>(),
        vec![0, ALIGN as i64, ALIGN as i64]
    );
    drop(ctx);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn requests_run_on_the_pool_never_on_the_submitting_thread() {
    if std::env::var(CHILD).is_ok() {
        child();
        return;
    }
    let exe = std::env::current_exe().expect("test executable");
    let log = test_path("pool-strace");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&log)
        .arg("-e")
        .arg(format!("trace={}", IO_CALLS.join(",")))
        .arg(&exe)
        .args([
            "--exact",
            "requests_run_on_the_pool_never_on_the_submitting_thread",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("strace is part of the test host (see shared/HOST.md tooling)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tid_after = |prefix: &str| -> Vec<i32> {
        stdout
            .lines()
            // The harness may print `test NAME ... ` in front of the first line.
            .filter_map(|l| l.split_once(prefix).map(|(_, tid)| tid))
            .map(|t| t.trim().parse().expect("tid"))
            .collect()
    };
    let submitter = tid_after("submitter ");
    let workers: HashSet<i32> = tid_after("worker ").into_iter().collect();
    assert_eq!(submitter.len(), 1, "{stdout}");
    assert_eq!(workers.len(), MAX_WORKERS, "{stdout}");
    let text = std::fs::read_to_string(&log).expect("strace output");
    let _ = std::fs::remove_file(&log);
    // Lines look like `1234 pwritev(5, [...], 1, 4096) = 4096` (strace pads the tid).
    let mut seen = HashSet::new();
    for line in text.lines() {
        let Some((tid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        let Some(name) = IO_CALLS.iter().find(|c| call.starts_with(&format!("{c}("))) else {
            continue;
        };
        let tid: i32 = tid.parse().expect("strace -f prefixes the tid");
        assert_ne!(tid, submitter[0], "{name} ran on the submitting thread");
        assert!(
            workers.contains(&tid),
            "{name} on thread {tid}, not a worker"
        );
        seen.insert(*name);
    }
    for call in IO_CALLS {
        assert!(seen.contains(call), "no {call} traced:\n{text}");
    }
}

#[test]
fn one_worker_runs_requests_in_submission_order() {
    let path = test_path("pool-fifo");
    let file = create_file(&path, &vec![0u8; ALIGN], Mode::Buffered);
    let mut ctx = ThreadsContext::new(std::os::unix::io::AsRawFd::as_raw_fd(&file), 1)
        .expect("one-worker pool");
    assert_eq!(ctx.workers(), 1);
    // 64 writes of the same block, each with its own fill: the file ends with the last one,
    // and the completions come back in the order the requests were submitted.
    let mut bufs: Vec<AlignedBuf> = (0..64).map(|_| AlignedBuf::new(ALIGN)).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        b.as_mut_slice().fill(i as u8);
    }
    let mut batch: Vec<AioRequest> = bufs
        .iter()
        .enumerate()
        .map(|(i, b)| rw(AioOpcode::Write, 0, vec![b.iovec(0, ALIGN)], i as u64))
        .collect();
    // SAFETY: `bufs` outlives the wait below, which reaps every request.
    unsafe { ctx.submit(&mut batch) }.expect("submit");
    assert_eq!(ctx.in_flight(), 64);
    let done = wait_for(&mut ctx, 64);
    let tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
    assert_eq!(tags, (0..64).collect::<Vec<u64>>());
    assert!(done.iter().all(|c| c.result == ALIGN as i64));
    drop(ctx);
    assert!(file_content(&path).iter().all(|&b| b == 63));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn drop_finishes_queued_requests_then_releases_their_keep_alives() {
    const N: usize = 256;
    let path = test_path("pool-drop");
    let file = create_file(&path, &vec![0u8; N * ALIGN], Mode::Direct);
    let mut ctx = open(AioEngine::Threads, &file, 2);
    let mut buf = AlignedBuf::new(N * ALIGN);
    Rng::new(3).fill(buf.as_mut_slice());
    let owner: Arc<AlignedBuf> = Arc::new(buf);
    let keep = KeepAlive::new(owner.clone());
    // One write per block: a request dropped instead of run leaves its block zero.
    let mut batch: Vec<AioRequest> = (0..N)
        .map(|i| {
            let at = i * ALIGN;
            AioRequest {
                keep_alive: Some(keep.clone()),
                ..rw(
                    AioOpcode::Write,
                    at as u64,
                    vec![owner.iovec(at, ALIGN)],
                    i as u64,
                )
            }
        })
        .collect();
    drop(keep);
    // SAFETY: the buffer is kept alive by the requests' `KeepAlive`s and by `owner`.
    unsafe { ctx.submit(&mut batch) }.expect("submit");
    assert!(
        Arc::strong_count(&owner) > 1,
        "queued requests hold the buffer"
    );
    drop(ctx);
    assert_eq!(
        Arc::strong_count(&owner),
        1,
        "every request finished and released its KeepAlive"
    );
    assert!(file_content(&path) == owner.as_slice());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn every_worker_runs_the_setup_step_before_any_request_and_a_failure_fails_the_engine() {
    use std::sync::Mutex;
    use util::aio::{open_engine_with, AioError, WorkerSetup};

    let path = test_path("pool-setup");
    let file = create_file(&path, &vec![7u8; ALIGN], Mode::Buffered);
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&file);
    // Each worker records its thread; a request's read then sees the whole record.
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = ran.clone();
    let setup = WorkerSetup::new(move || {
        let name = std::thread::current().name().unwrap_or("").to_string();
        record.lock().unwrap().push(name);
        Ok(())
    });
    let mut ctx = open_engine_with(AioEngine::Threads, fd, 4, &setup).expect("pool");
    let mut names = ran.lock().unwrap().clone();
    names.sort();
    let expected: Vec<String> = (0..4).map(|i| format!("{WORKER_NAME}{i}")).collect();
    assert_eq!(
        names, expected,
        "every worker, once, before the engine is returned"
    );
    let buf = AlignedBuf::new(ALIGN);
    let mut batch = vec![rw(AioOpcode::Read, 0, vec![buf.iovec(0, ALIGN)], 1)];
    // SAFETY: `buf` outlives the wait below, which reaps the request.
    unsafe { ctx.submit(&mut batch) }.expect("submit");
    let done = wait_for(ctx.as_mut(), 1);
    assert_eq!(done[0].result, ALIGN as i64);
    assert!(buf.as_slice().iter().all(|&b| b == 7));
    drop(ctx);

    // One worker's step fails: the engine is not made, and every worker has ended (each held
    // a clone of the step, and with it of `witness`).
    let witness = Arc::new(());
    let held = witness.clone();
    let failing = WorkerSetup::new(move || {
        let _ = &held;
        match std::thread::current().name() {
            Some(name) if name == format!("{WORKER_NAME}2") => Err("no filter for you".into()),
            _ => Ok(()),
        }
    });
    let err = open_engine_with(AioEngine::Threads, fd, 8, &failing)
        .err()
        .expect("a worker failed its set-up");
    assert!(
        matches!(err, AioError::WorkerSetup { .. }),
        "{err}: {err:?}"
    );
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(source.as_deref(), Some("no filter for you"));
    drop(failing);
    assert_eq!(Arc::strong_count(&witness), 1, "every worker ended");
    // The other engines start no thread: the step is never run (aio=native needs O_DIRECT,
    // which this buffered file lacks; it starts no thread either).
    let never = WorkerSetup::new(|| Err("must not run".into()));
    for engine in [AioEngine::Off, AioEngine::IoUring] {
        drop(open_engine_with(engine, fd, 4, &never).expect("engine"));
    }
    let _ = std::fs::remove_file(&path);
}
