//! Choosing an engine: the `aio=` spellings, the start-up probe, `open_engine`, and what each
//! engine says it supports.

mod aio_common;

use std::os::unix::io::AsRawFd;

use aio_common::*;
use util::aio::{open_engine, probe, AioEngine, AioError, AioOpcode};

#[test]
fn engine_names_parse_and_print() {
    for (text, engine) in [
        ("off", AioEngine::Off),
        ("threads", AioEngine::Threads),
        ("native", AioEngine::Native),
        ("io_uring", AioEngine::IoUring),
        ("iouring", AioEngine::IoUring),
    ] {
        assert_eq!(text.parse::<AioEngine>().expect("known name"), engine);
    }
    for engine in AioEngine::ALL {
        assert_eq!(
            engine.to_string().parse::<AioEngine>().expect("round trip"),
            engine
        );
    }
    for bad in ["", "uring", "Native", "io-uring", "native "] {
        let err = bad.parse::<AioEngine>().expect_err("unknown name");
        assert!(matches!(err, AioError::UnknownEngine(ref s) if s == bad));
        assert!(
            err.to_string().contains("off, threads, native or io_uring"),
            "{err}"
        );
    }
}

#[test]
fn every_engine_is_available_on_the_test_host() {
    for engine in AioEngine::ALL {
        probe(engine).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn unavailable_error_names_engine_and_errno() {
    let err = AioError::Unavailable {
        engine: AioEngine::IoUring,
        source: std::io::Error::from_raw_os_error(libc::EPERM),
    };
    let text = err.to_string();
    assert!(text.contains("aio=io_uring"), "{text}");
    let source = std::error::Error::source(&err).expect("errno is the source");
    assert!(source.to_string().contains("os error 1"), "{source}");
}

#[test]
fn open_engine_reports_engine_and_capabilities() {
    let path = test_path("select");
    let file = create_file(&path, &[0u8; ALIGN], Mode::Buffered);
    for engine in AioEngine::ALL {
        for depth in [0, 1, 256] {
            let ctx = open_engine(engine, file.as_raw_fd(), depth).expect("open");
            assert_eq!(ctx.engine(), engine);
            assert_eq!(ctx.in_flight(), 0);
            for op in [AioOpcode::Read, AioOpcode::Write, AioOpcode::Flush] {
                assert!(ctx.supports(op));
            }
            let zeroing = engine != AioEngine::Native;
            assert_eq!(ctx.supports(AioOpcode::Discard), zeroing, "aio={engine}");
            assert_eq!(
                ctx.supports(AioOpcode::WriteZeroes),
                zeroing,
                "aio={engine}"
            );
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// A write to a read-only file descriptor fails at submission (`EBADF`): the error is the
/// request's completion, the rest of the batch still runs.
#[test]
fn submission_errors_complete_their_request() {
    let path = test_path("readonly");
    std::fs::write(&path, vec![4u8; 4 * ALIGN]).expect("write");
    let file = std::fs::File::open(&path).expect("open read-only");
    for engine in AioEngine::ALL {
        let mut ctx = open(engine, &file, 2);
        let buf = AlignedBuf::new(4 * ALIGN);
        let batch = vec![
            rw(AioOpcode::Write, 0, vec![buf.iovec(0, ALIGN)], 0),
            rw(AioOpcode::Read, 0, vec![buf.iovec(ALIGN, ALIGN)], 1),
            rw(AioOpcode::Write, 0, vec![buf.iovec(2 * ALIGN, ALIGN)], 2),
            rw(
                AioOpcode::Read,
                ALIGN as u64,
                vec![buf.iovec(3 * ALIGN, ALIGN)],
                3,
            ),
        ];
        let done = run_batch(ctx.as_mut(), batch);
        let ebadf = -i64::from(libc::EBADF);
        let results: Vec<i64> = done.iter().map(|c| c.result).collect();
        assert_eq!(
            results,
            vec![ebadf, ALIGN as i64, ebadf, ALIGN as i64],
            "aio={engine}"
        );
        assert!(buf.as_slice()[ALIGN..2 * ALIGN].iter().all(|&b| b == 4));
    }
    let _ = std::fs::remove_file(&path);
}

/// Installs, on the calling thread only, a seccomp filter that fails `io_uring_setup` with
/// `EPERM` and `io_setup` with `ENOSYS` (what a container runtime's profile does).
fn refuse_async_io_on_this_thread() {
    const LD_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS, offset 0: seccomp_data.nr
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let filter = [
        insn(LD_NR, 0, 0, 0),
        insn(JEQ, 0, 1, libc::SYS_io_uring_setup as u32),
        insn(RET, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        insn(JEQ, 0, 1, libc::SYS_io_setup as u32),
        insn(RET, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        insn(RET, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments; NO_NEW_PRIVS and the filter are per-thread
    // (no SECCOMP_FILTER_FLAG_TSYNC), so other tests' threads are unaffected. `prog` and
    // `filter` live across the call, which copies them.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const _
            ),
            0
        );
    }
}

#[test]
fn probe_names_engine_and_errno_when_the_kernel_refuses() {
    let results = std::thread::spawn(|| {
        refuse_async_io_on_this_thread();
        AioEngine::ALL.map(|engine| (engine, probe(engine)))
    })
    .join()
    .expect("probe thread");
    for (engine, result) in results {
        let errno = match engine {
            AioEngine::Off | AioEngine::Threads => {
                assert!(
                    result.is_ok(),
                    "aio={engine} needs nothing more from the kernel"
                );
                continue;
            }
            AioEngine::Native => libc::ENOSYS,
            AioEngine::IoUring => libc::EPERM,
        };
        let err = result.expect_err("refused by seccomp");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("aio={engine} is not available")),
            "{text}"
        );
        let AioError::Unavailable {
            engine: named,
            source,
        } = err
        else {
            panic!("aio={engine}: wrong error variant: {err:?}");
        };
        assert_eq!(named, engine);
        assert_eq!(source.raw_os_error(), Some(errno), "aio={engine}");
    }
    // The filter stayed on the thread that installed it.
    probe(AioEngine::IoUring).expect("io_uring still available here");
}
