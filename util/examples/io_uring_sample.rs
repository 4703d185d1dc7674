//! Reads the first 100 bytes of FILE with one `IORING_OP_READ_FIXED`, driving io_uring by
//! hand: `io_uring_setup`, three `mmap`s, a registered buffer, one SQE, `io_uring_enter`,
//! one CQE. It uses only the raw ABI (`util::io_uring::sys`) and the syscall wrappers, to
//! show the mechanism; `util::io_uring::IoUring` packages the same steps.
//!
//! Usage: `cargo run -p util --example io_uring_sample -- FILE`

use std::fs::File;
use std::io::{self, Write};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};

use util::io_uring::sys::{
    io_uring_cqe, io_uring_params, io_uring_sqe, IORING_ENTER_GETEVENTS, IORING_OFF_CQ_RING,
    IORING_OFF_SQES, IORING_OFF_SQ_RING, IORING_REGISTER_BUFFERS,
};
use util::io_uring::{io_uring_enter, io_uring_register, io_uring_setup};

const ENTRIES: u32 = 128;
const READ_LEN: u32 = 100;
const USER_DATA: u64 = 0x5a5a_0001;

/// One shared, pre-faulted mapping of the ring fd at a magic offset.
struct Region {
    base: *mut u8,
    len: usize,
}

impl Region {
    fn map(fd: i32, len: usize, offset: u64, what: &str) -> Result<Region, String> {
        // SAFETY: a fresh kernel-chosen mapping overlaps no Rust object; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                offset as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!("mmap {what}: {}", io::Error::last_os_error()));
        }
        Ok(Region {
            base: base.cast(),
            len,
        })
    }

    /// The `T` at byte `offset` (a kernel-reported offset inside this region).
    fn at<T>(&self, offset: u32) -> *mut T {
        assert!(
            offset as usize + size_of::<T>() <= self.len,
            "offset outside the mapping"
        );
        // SAFETY: in bounds of the mapping (asserted above).
        unsafe { self.base.add(offset as usize).cast() }
    }

    /// The shared ring word at byte `offset`, as an atomic.
    fn word(&self, offset: u32) -> &AtomicU32 {
        // SAFETY: ring words are 4-byte aligned and live as long as the mapping (`self`).
        unsafe { &*self.at::<AtomicU32>(offset) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`, once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

fn run(path: &str) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
    // The fixed buffer (4 KiB, at least 100 bytes). Declared before the ring so that it is
    // dropped after it: locals drop in reverse order, so the mappings are unmapped, then the
    // ring fd is closed (ending the registration), and only then is the buffer freed.
    let mut buf = vec![0u8; 4096];

    let mut p = io_uring_params::default();
    let raw = io_uring_setup(ENTRIES, &mut p).map_err(|e| format!("io_uring_setup: {e}"))?;
    // SAFETY: `raw` is a fresh descriptor owned by nothing else; `ring` closes it.
    let ring = unsafe { OwnedFd::from_raw_fd(raw) };
    let ring_fd = ring.as_raw_fd();

    // Ring sizes exactly as the C sample computes them.
    let sring_sz = p.sq_off.array as usize + p.sq_entries as usize * size_of::<u32>();
    let cring_sz = p.cq_off.cqes as usize + p.cq_entries as usize * size_of::<io_uring_cqe>();
    let sq = Region::map(ring_fd, sring_sz, IORING_OFF_SQ_RING, "SQ ring")?;
    let cq = Region::map(ring_fd, cring_sz, IORING_OFF_CQ_RING, "CQ ring")?;
    let sqes = Region::map(
        ring_fd,
        p.sq_entries as usize * size_of::<io_uring_sqe>(),
        IORING_OFF_SQES,
        "SQE array",
    )?;

    // Register the buffer as fixed buffer 0.
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which outlives the ring (see its declaration).
    unsafe {
        io_uring_register(
            ring_fd,
            IORING_REGISTER_BUFFERS,
            (&iov as *const libc::iovec).cast(),
            1,
        )
    }
    .map_err(|e| format!("IORING_REGISTER_BUFFERS: {e}"))?;

    // Fill one SQE and publish it: SQE slot, index array, then the tail (release).
    let sqe = io_uring_sqe::read_fixed(
        file.as_raw_fd(),
        buf.as_mut_ptr(),
        READ_LEN,
        0,
        0,
        USER_DATA,
    );
    let mask = sq.word(p.sq_off.ring_mask).load(Ordering::Relaxed);
    let tail = sq.word(p.sq_off.tail).load(Ordering::Acquire);
    let index = tail & mask;
    // SAFETY: `index <= mask < sq_entries`, inside the SQE array and the index array; the
    // kernel reads neither slot before the tail store below.
    unsafe {
        sqes.base
            .cast::<io_uring_sqe>()
            .add(index as usize)
            .write(sqe);
        sq.at::<u32>(p.sq_off.array)
            .add(index as usize)
            .write(index);
    }
    sq.word(p.sq_off.tail)
        .store(tail.wrapping_add(1), Ordering::Release);

    let submitted = io_uring_enter(ring_fd, 1, 1, IORING_ENTER_GETEVENTS)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    if submitted != 1 {
        return Err(format!(
            "io_uring_enter consumed {submitted} SQEs, expected 1"
        ));
    }

    // Read the CQE at the head (tail loaded with acquire), then advance the head (release).
    let head = cq.word(p.cq_off.head).load(Ordering::Relaxed);
    if cq.word(p.cq_off.tail).load(Ordering::Acquire) == head {
        return Err("no completion after io_uring_enter".into());
    }
    let cq_mask = cq.word(p.cq_off.ring_mask).load(Ordering::Relaxed);
    // SAFETY: `head & cq_mask < cq_entries`, inside the CQE array, published by the tail.
    let cqe = unsafe {
        cq.at::<io_uring_cqe>(p.cq_off.cqes)
            .add((head & cq_mask) as usize)
            .read()
    };
    cq.word(p.cq_off.head)
        .store(head.wrapping_add(1), Ordering::Release);

    println!("cqe.res = {}", cqe.res);
    println!("cqe.user_data = {:#x}", cqe.user_data);
    if cqe.res < 0 {
        return Err(format!(
            "read failed: {}",
            io::Error::from_raw_os_error(-cqe.res)
        ));
    }
    let n = (cqe.res as usize).min(buf.len());
    println!("bytes read ({n}):");
    let mut out = io::stdout().lock();
    out.write_all(&buf[..n])
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|e| format!("stdout: {e}"))
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: io_uring_sample FILE");
        return ExitCode::from(2);
    };
    match run(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("io_uring_sample: {msg}");
            ExitCode::FAILURE
        }
    }
}
