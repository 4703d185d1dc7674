//! Block I/O engines behind one [`AioContext`] trait: `aio=off|threads|native|io_uring`.
//!
//! ```text
//!   device ──submit(batch)──► engine ──(one syscall per batch)──► kernel
//!     ▲                          │
//!     └──reap(&mut out)◄── eventfd readable ◄── completions
//! ```
//!
//! Contract shared by every engine:
//! - A request is owned by the engine from [`AioContext::submit`] until its completion is
//!   returned by [`AioContext::reap`]; it is identified by its caller-chosen `tag`.
//! - The engine's eventfd ([`AioContext::eventfd`]) becomes readable when completions are
//!   ready. This holds for the synchronous engine too: it does the I/O inline, queues the
//!   result and writes its eventfd, and for the thread pool, whose workers write it, so
//!   callers have exactly one way to learn that a request finished.
//! - A completion's `result` is the number of bytes transferred (the full request length:
//!   short transfers are finished or retried by the engine) or a negative errno.
//! - What the kernel does not accept at once (a full ring, `EAGAIN`) stays queued inside the
//!   engine, in order, and is submitted after the next completions.
//! - An engine borrows its file descriptor: whoever calls [`open_engine`] keeps the file open
//!   for as long as the engine exists. Dropping an engine first waits for its in-flight
//!   requests, so their buffers are never written after the engine is gone.
//! - A request may carry a [`KeepAlive`]: what keeps its buffers mapped (guest RAM). The engine
//!   holds it until the request's completion is handed out. An engine dropped with requests it
//!   could not drain (the kernel may still write into their buffers) leaks their `KeepAlive`s
//!   instead of dropping them, so that memory is never unmapped under in-flight I/O.
//! - An engine is used from one thread at a time (the workers of `aio=threads` only run
//!   requests and post completions; `submit`, `reap` and `drain` stay on the caller's thread).
//!   An `io_uring` ring is bound to the first thread that submits to it (a single-issuer ring);
//!   calls from any other thread afterwards fail with [`AioError::WrongThread`] and change
//!   nothing.
//! - [`AioContext::poll_ready`] reads only memory (rings shared with the kernel with acquire
//!   loads of their indexes, atomics shared with workers): it makes no system call, so an
//!   event loop may call it in a spin.
//! - A request the engine cannot carry ([`AioContext::supports`] is `false`) completes with
//!   `-EOPNOTSUPP`; a read or write that moves no bytes completes with 0 at once.
//! - Misaligned `O_DIRECT` requests are passed to the kernel as they are and its answer is
//!   their completion: `-EINVAL` where the filesystem enforces alignment (ext4, XFS, block
//!   devices), success on tmpfs, which has no alignment rule. No bounce buffers.
//!
//! Files: [`sync`] (`aio=off`), [`threads`] (`aio=threads`), [`libaio`] (`aio=native`, on
//! [`abi`]), [`uring`] (`aio=io_uring`, on [`crate::io_uring`]); `inflight` holds the
//! per-request bookkeeping and the short-transfer rules the four share; `options` the
//! per-drive options that shape what a device asks of its engine (error policy, discard,
//! detect-zeroes, throttling), shared by the command line, QMP and the device.

pub mod abi;
mod inflight;
pub mod libaio;
mod options;
pub mod sync;
pub mod threads;
pub mod uring;

use std::any::Any;
use std::fmt;
use std::os::unix::io::RawFd;
use std::str::FromStr;
use std::sync::Arc;

pub use options::{DetectZeroes, Discard, ErrorAction, Limit, ThrottleConfig};
pub use threads::WorkerSetup;

/// One contiguous piece of a request's buffer in host virtual memory.
/// Same layout as the kernel's `struct iovec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Iovec {
    /// Host virtual address of the first byte.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What a request asks of the backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AioOpcode {
    /// Read into the iovecs from `offset`.
    Read,
    /// Write the iovecs at `offset`.
    Write,
    /// Make every completed write durable (fdatasync).
    Flush,
    /// Deallocate `len` bytes at `offset` (reads of them then return zeroes).
    Discard,
    /// Write `len` zero bytes at `offset`.
    WriteZeroes,
}

/// What keeps a request's buffers mapped (for the VMM: guest RAM), shared by the requests that
/// point into it. Cloning it costs one atomic increment.
#[derive(Clone)]
pub struct KeepAlive(Arc<dyn Any + Send + Sync>);

impl KeepAlive {
    /// Keeps `owner` alive while requests that carry this value are in an engine.
    pub fn new(owner: Arc<dyn Any + Send + Sync>) -> KeepAlive {
        KeepAlive(owner)
    }

    /// Gives up this reference without ever releasing it: the owner stays alive for the rest
    /// of the process. For buffers the kernel may still write into.
    fn leak(self) {
        std::mem::forget(self.0);
    }
}

impl fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeepAlive")
    }
}

impl PartialEq for KeepAlive {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for KeepAlive {}

/// An I/O request handed to an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AioRequest {
    /// The operation.
    pub opcode: AioOpcode,
    /// Byte offset in the backing file.
    pub offset: u64,
    /// The buffers of a read or write; empty for the other opcodes.
    pub iovecs: Vec<Iovec>,
    /// Byte count of a discard or write-zeroes; ignored for the other opcodes.
    pub len: u64,
    /// The caller's key for this request, returned with its completion.
    pub tag: u64,
    /// What keeps the iovecs' memory mapped; held by the engine until the completion.
    pub keep_alive: Option<KeepAlive>,
}

impl AioRequest {
    /// Total bytes this request moves (the sum of its iovecs, or `len`).
    pub fn nbytes(&self) -> u64 {
        match self.opcode {
            AioOpcode::Read | AioOpcode::Write => self.iovecs.iter().map(|iov| iov.len).sum(),
            AioOpcode::Flush => 0,
            AioOpcode::Discard | AioOpcode::WriteZeroes => self.len,
        }
    }
}

/// A finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AioCompletion {
    /// The request's tag.
    pub tag: u64,
    /// Bytes transferred, or a negative errno.
    pub result: i64,
}

/// The engine of a drive, from `aio=off|threads|native|io_uring`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AioEngine {
    /// Synchronous preadv/pwritev in the caller's thread.
    Off,
    /// The same system calls run by a small pool of worker threads ([`threads`]).
    Threads,
    /// Linux native AIO (io_setup/io_submit), completions signalled through an eventfd.
    Native,
    /// io_uring with its eventfd registered.
    IoUring,
}

impl AioEngine {
    /// Every engine, in the order tables list them.
    pub const ALL: [AioEngine; 4] = [
        AioEngine::Off,
        AioEngine::Threads,
        AioEngine::Native,
        AioEngine::IoUring,
    ];

    /// The spelling used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AioEngine::Off => "off",
            AioEngine::Threads => "threads",
            AioEngine::Native => "native",
            AioEngine::IoUring => "io_uring",
        }
    }
}

impl fmt::Display for AioEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AioEngine {
    type Err = AioError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(AioEngine::Off),
            "threads" => Ok(AioEngine::Threads),
            "native" => Ok(AioEngine::Native),
            "io_uring" | "iouring" => Ok(AioEngine::IoUring),
            other => Err(AioError::UnknownEngine(other.to_string())),
        }
    }
}

/// Errors of the block engines.
#[derive(Debug, thiserror::Error)]
pub enum AioError {
    /// The engine name is not one of `off`, `threads`, `native`, `io_uring` (`iouring`).
    #[error("unknown aio engine {0:?}: expected off, threads, native or io_uring")]
    UnknownEngine(String),
    /// The kernel refused to set the engine up (e.g. io_uring disabled by sysctl or seccomp).
    #[error("aio={engine} is not available on this kernel: {source}")]
    Unavailable {
        /// The engine that was probed.
        engine: AioEngine,
        /// The errno returned by the kernel.
        #[source]
        source: std::io::Error,
    },
    /// A system call of the engine failed.
    #[error("aio={engine}: {call} failed: {source}")]
    Syscall {
        /// The engine.
        engine: AioEngine,
        /// The failing call, e.g. `io_submit`.
        call: &'static str,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// A worker's set-up step ([`WorkerSetup`]: the VMM's seccomp filter) failed; the pool's
    /// workers were stopped.
    #[error("aio={engine}: a worker thread could not be set up")]
    WorkerSetup {
        /// The engine.
        engine: AioEngine,
        /// The cause.
        #[source]
        source: crate::event_loop::ThreadSetupError,
    },
    /// The engine is bound to another thread (an `io_uring` ring takes system calls from the
    /// thread that first used it).
    #[error("aio={engine}: the engine belongs to another thread")]
    WrongThread {
        /// The engine.
        engine: AioEngine,
    },
    /// The request cannot be expressed with this engine (e.g. discard on Linux AIO).
    #[error("aio={engine} does not support {opcode:?}")]
    Unsupported {
        /// The engine.
        engine: AioEngine,
        /// The opcode it lacks.
        opcode: AioOpcode,
    },
}

/// A block engine bound to one open file.
pub trait AioContext: Send {
    /// Which engine this is.
    fn engine(&self) -> AioEngine;

    /// Whether the engine can carry `opcode` (reads, writes and flushes always can).
    fn supports(&self, opcode: AioOpcode) -> bool;

    /// Hands the whole `batch` to the engine (the vector is left empty), with as few system
    /// calls as the engine allows: one per batch when nothing is queued. Requests the kernel
    /// does not take at once stay queued inside the engine and go out after completions.
    ///
    /// # Safety
    /// Every iovec must point to host memory that stays valid (and, for reads, writable)
    /// until the request's completion has been returned by [`AioContext::reap`] or
    /// [`AioContext::drain`].
    unsafe fn submit(&mut self, batch: &mut Vec<AioRequest>) -> Result<(), AioError>;

    /// The eventfd that becomes readable when completions are ready.
    fn eventfd(&self) -> RawFd;

    /// Clears the eventfd and appends every ready completion to `out`; submits what was
    /// queued if room was made. Returns how many completions were appended.
    fn reap(&mut self, out: &mut Vec<AioCompletion>) -> Result<usize, AioError>;

    /// Requests submitted (or queued) whose completion has not yet been reaped.
    fn in_flight(&self) -> usize;

    /// Whether [`AioContext::reap`] would find completions, learnt without a system call
    /// (for an event loop that polls before it sleeps): the io_uring CQ ring's indexes and
    /// flags, the Linux AIO ring's head and tail, the thread pool's finished flag, completions
    /// made without the kernel. It may answer `true` once for completions the eventfd also
    /// announced; a `false` is never wrong for long, since the eventfd still fires.
    fn poll_ready(&self) -> bool;

    /// Waits until every in-flight request has completed and appends the completions to `out`.
    fn drain(&mut self, out: &mut Vec<AioCompletion>) -> Result<(), AioError>;

    /// A cleared iovec buffer for the caller's next request, taken back from a request that
    /// finished, so that a steady stream of requests allocates none; the default is a new one.
    fn iovec_buffer(&mut self) -> Vec<Iovec> {
        Vec::new()
    }

    /// Tells the engine that requests will mostly point into `regions` (e.g. guest RAM), so it
    /// may pin them once instead of per request. Returns whether the engine uses them; the
    /// default does nothing. Call it before submitting anything.
    fn register_memory(&mut self, regions: &[Iovec]) -> Result<bool, AioError> {
        let _ = regions;
        Ok(false)
    }
}

/// Checks at start-up whether this kernel lets `engine` run (io_uring can be disabled by
/// `kernel.io_uring_disabled` or a seccomp filter; Linux AIO by `fs.aio-max-nr`).
/// The error names the engine and carries the kernel's errno.
pub fn probe(engine: AioEngine) -> Result<(), AioError> {
    let unavailable = |source| AioError::Unavailable { engine, source };
    match engine {
        AioEngine::Off | AioEngine::Threads => Ok(()),
        AioEngine::Native => {
            let ctx = abi::io_setup(1).map_err(unavailable)?;
            abi::io_destroy(ctx).map_err(unavailable)
        }
        AioEngine::IoUring => uring::probe().map_err(unavailable),
    }
}

/// Creates the `engine` for the open file `fd` with room for `depth` requests in the kernel at
/// once (at least 1; more are queued inside the engine). `aio=threads` starts its workers here,
/// on the calling thread: `min(depth, threads::MAX_WORKERS)` of them.
///
/// The fd is borrowed: the caller keeps the file open for the whole life of the returned
/// engine, and drops the engine before closing it.
pub fn open_engine(
    engine: AioEngine,
    fd: RawFd,
    depth: u32,
) -> Result<Box<dyn AioContext>, AioError> {
    open_engine_with(engine, fd, depth, &WorkerSetup::default())
}

/// Like [`open_engine`]; the workers of `aio=threads` run `workers` first thing (the other
/// engines start no thread and ignore it).
pub fn open_engine_with(
    engine: AioEngine,
    fd: RawFd,
    depth: u32,
    workers: &WorkerSetup,
) -> Result<Box<dyn AioContext>, AioError> {
    Ok(match engine {
        AioEngine::Off => Box::new(sync::SyncContext::new(fd)?),
        AioEngine::Threads => Box::new(threads::ThreadsContext::with_setup(fd, depth, workers)?),
        AioEngine::Native => Box::new(libaio::NativeContext::new(fd, depth)?),
        AioEngine::IoUring => Box::new(uring::UringContext::new(fd, depth)?),
    })
}
