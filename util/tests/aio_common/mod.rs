//! Helpers shared by the engine test files: real files, aligned buffers, a reference model,
//! and a completion wait that goes through the engine's eventfd like the event loop does.

#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use util::aio::{AioCompletion, AioContext, AioEngine, AioOpcode, AioRequest, Iovec};

/// Alignment that satisfies O_DIRECT on every filesystem here.
pub const ALIGN: usize = 4096;

/// Where the test file lives and how it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Page cache, on the disk (ext4 here).
    Buffered,
    /// `O_DIRECT`, on the disk: the filesystem enforces sector alignment.
    Direct,
    /// Page cache, on tmpfs (`/dev/shm`).
    ShmBuffered,
    /// `O_DIRECT` on tmpfs: accepted, with no alignment rule and no `ZERO_RANGE`.
    ShmDirect,
}

impl Mode {
    /// Whether the file is opened with `O_DIRECT`.
    pub fn direct(self) -> bool {
        matches!(self, Mode::Direct | Mode::ShmDirect)
    }

    /// Whether the file lives on tmpfs.
    pub fn tmpfs(self) -> bool {
        matches!(self, Mode::ShmBuffered | Mode::ShmDirect)
    }
}

/// Deterministic xorshift64* generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A heap buffer aligned to [`ALIGN`].
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is uniquely owned heap memory.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only read the buffer (the kernel writes it only through iovecs
// handed out by the test, which owns the synchronisation).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), ALIGN).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        AlignedBuf { ptr, len }
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised bytes while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    /// An iovec over `len` bytes starting `start` bytes into the buffer.
    pub fn iovec(&self, start: usize, len: usize) -> Iovec {
        assert!(start + len <= self.len);
        Iovec {
            base: self.ptr as u64 + start as u64,
            len: len as u64,
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len.max(1), ALIGN).expect("layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, layout) };
    }
}

/// A fresh test file path under the cargo target dir (ext4 here: O_DIRECT works).
pub fn test_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("aio");
    in_dir(dir, name)
}

/// A fresh test file path on the filesystem `mode` names.
pub fn path_for(name: &str, mode: Mode) -> PathBuf {
    if mode.tmpfs() {
        in_dir(
            PathBuf::from("/dev/shm/stratovirt-aio-tests"),
            &format!("{name}-{mode:?}"),
        )
    } else {
        test_path(&format!("{name}-{mode:?}"))
    }
}

fn in_dir(dir: PathBuf, name: &str) -> PathBuf {
    std::fs::create_dir_all(&dir).expect("create test dir");
    let path = dir.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Writes `content` to a new file at `path` and opens it read-write in `mode`.
pub fn create_file(path: &PathBuf, content: &[u8], mode: Mode) -> File {
    std::fs::write(path, content).expect("write initial content");
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if mode.direct() {
        opts.custom_flags(libc::O_DIRECT);
    }
    opts.open(path).expect("open test file")
}

/// The file's bytes read back through the page cache.
pub fn file_content(path: &PathBuf) -> Vec<u8> {
    let file = File::open(path).expect("reopen");
    let len = file.metadata().expect("metadata").len() as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0).expect("read back");
    buf
}

/// A read or write request over `iovecs`.
pub fn rw(opcode: AioOpcode, offset: u64, iovecs: Vec<Iovec>, tag: u64) -> AioRequest {
    AioRequest {
        opcode,
        offset,
        iovecs,
        len: 0,
        tag,
        keep_alive: None,
    }
}

/// A request without buffers (flush, discard, write-zeroes).
pub fn ranged(opcode: AioOpcode, offset: u64, len: u64, tag: u64) -> AioRequest {
    AioRequest {
        opcode,
        offset,
        iovecs: Vec::new(),
        len,
        tag,
        keep_alive: None,
    }
}

/// Blocks in poll(2) until the engine's eventfd is readable (at most 10 s).
pub fn wait_eventfd(ctx: &dyn AioContext) {
    let mut pfd = libc::pollfd {
        fd: ctx.eventfd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(
        n,
        1,
        "eventfd of aio={} never became readable",
        ctx.engine()
    );
}

/// Waits through the eventfd and reaps until `count` completions have arrived.
pub fn wait_for(ctx: &mut dyn AioContext, count: usize) -> Vec<AioCompletion> {
    let mut out = Vec::new();
    while out.len() < count {
        wait_eventfd(ctx);
        ctx.reap(&mut out).expect("reap");
    }
    assert_eq!(out.len(), count, "more completions than requests");
    out
}

/// Submits `batch` and waits for all of its completions; returns them sorted by tag.
pub fn run_batch(ctx: &mut dyn AioContext, mut batch: Vec<AioRequest>) -> Vec<AioCompletion> {
    let n = batch.len();
    // SAFETY: callers keep every buffer alive until this function returns, by which time
    // every completion has been reaped.
    unsafe { ctx.submit(&mut batch) }.expect("submit");
    assert!(batch.is_empty(), "submit must take the whole batch");
    let mut done = wait_for(ctx, n);
    done.sort_by_key(|c| c.tag);
    done
}

/// The engine under test, opened on `file`.
pub fn open(engine: AioEngine, file: &File, depth: u32) -> Box<dyn AioContext> {
    util::aio::probe(engine).expect("engine available on the test host");
    util::aio::open_engine(engine, file.as_raw_fd(), depth).expect("open engine")
}
