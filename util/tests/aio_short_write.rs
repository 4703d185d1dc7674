//! A write the kernel only partly performs is continued, never reported as a success.
//!
//! `RLIMIT_FSIZE` makes the kernel cut a write that crosses the limit short (it writes up to
//! the limit and returns the count); the engine then resubmits the rest, which fails with
//! `EFBIG`, and that error is the completion. This binary holds one test because the limit
//! is per process.

mod aio_common;

use aio_common::*;
use util::aio::{AioEngine, AioOpcode};

/// Lowers `RLIMIT_FSIZE` until dropped. The limit applies to every file the process writes,
/// the test harness's own output too when it goes to a file, so it must not outlive the test
/// (nor a failing assertion's message).
struct FileSizeLimit {
    saved: libc::rlimit,
}

impl FileSizeLimit {
    fn set(bytes: u64) -> FileSizeLimit {
        let mut saved = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `saved` is a valid, writable rlimit.
        let got = unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut saved) };
        assert_eq!(got, 0);
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: saved.rlim_max,
        };
        // SAFETY: a valid rlimit value; lowering the soft limit only affects later writes.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
        FileSizeLimit { saved }
    }
}

impl Drop for FileSizeLimit {
    fn drop(&mut self) {
        // SAFETY: restores the limit read in `set`, which the process held before.
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &self.saved) };
    }
}

#[test]
fn short_write_is_finished_or_reported_as_error() {
    const SIZE: usize = 2 * ALIGN;
    const ROOM: u64 = 1000;
    // SAFETY: ignoring SIGXFSZ only turns the signal into the EFBIG errno.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let paths: Vec<_> = AioEngine::ALL
        .iter()
        .map(|e| test_path(&format!("short-{e}")))
        .collect();
    let files: Vec<_> = paths
        .iter()
        .map(|p| create_file(p, &[3u8; SIZE], Mode::Buffered))
        .collect();
    let _limit = FileSizeLimit::set(SIZE as u64 + ROOM);
    for ((engine, path), file) in AioEngine::ALL.iter().zip(&paths).zip(&files) {
        let mut ctx = open(*engine, file, 4);
        let mut buf = AlignedBuf::new(ALIGN);
        buf.as_mut_slice().fill(0x5a);
        let batch = vec![
            rw(AioOpcode::Write, SIZE as u64, vec![buf.iovec(0, ALIGN)], 1),
            rw(
                AioOpcode::Write,
                0,
                vec![buf.iovec(0, 512), buf.iovec(512, 512)],
                2,
            ),
        ];
        let done = run_batch(ctx.as_mut(), batch);
        assert_eq!(
            done[0].result,
            -i64::from(libc::EFBIG),
            "aio={engine}: short write"
        );
        assert_eq!(done[1].result, 1024, "aio={engine}: full write");
        drop(ctx);
        let content = file_content(path);
        assert_eq!(
            content.len(),
            SIZE + ROOM as usize,
            "the part below the limit was written"
        );
        assert!(content[..1024].iter().all(|&b| b == 0x5a));
        assert!(content[SIZE..].iter().all(|&b| b == 0x5a));
        let _ = std::fs::remove_file(path);
    }
}
