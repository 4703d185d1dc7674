//! `aio=threads`: a small pool of worker threads runs each request with the system calls of
//! `aio=off` (`preadv`/`pwritev`/`fdatasync`/`fallocate`), beside the caller's event loop.
//!
//! ```text
//!   submit(batch) ──(one lock)──► queue (FIFO) ──► aio-worker-0..N-1: run_to_end(slot)
//!                                                        │ (no lock held in the system call)
//!   reap(out) ◄── swap(done) ◄── eventfd readable ◄── done (empty → non-empty writes the eventfd)
//! ```
//!
//! Invariants:
//! - The pool has `min(depth, MAX_WORKERS)` workers, all started by [`ThreadsContext::new`]
//!   on the thread that opens the engine (the VMM's main thread) and none later: the
//!   thread that uses the engine (the device's event loop) never creates a thread, and a host
//!   that cannot give the threads makes opening the drive fail instead of a request stalling.
//!   Workers are named `aio-worker-N` (N from 0 within one engine) and have small stacks;
//!   `new` returns once every worker runs.
//! - Each worker runs the engine's [`WorkerSetup`] first thing (the VMM installs the worker's
//!   seccomp filter there), before it counts as started and before it takes any request. If
//!   it fails on any worker, the pool is stopped and joined and `new` fails with
//!   [`AioError::WorkerSetup`]: no request ever runs on a worker that was not set up.
//! - `submit`, `reap`, `in_flight` and `drain` run on the engine's one user thread; the workers
//!   only take requests, run them and post completions. Requests are taken in submission order
//!   (FIFO); with more requests than workers the rest wait in the queue. Requests running on
//!   different workers complete in any order.
//! - A worker runs a request to its end in one go (short transfers, `EINTR`/`EAGAIN`, the
//!   write-zeroes fallback and EOF zero-fill are the shared `inflight::advance` rules, by way of
//!   [`super::sync`]), with no lock held during a system call.
//! - A worker writes the eventfd only when the list of finished requests goes from empty to
//!   non-empty; `reap` clears the eventfd before it takes the whole list. So a completion is
//!   never left without a readable eventfd, and a burst of completions costs one wake-up.
//! - A finished request goes back to the user thread whole: its `KeepAlive` is released and its
//!   iovec buffer kept for [`AioContext::iovec_buffer`] there, never on a worker. In a steady
//!   stream nothing allocates: the staging and shared queues, the finished list and its swap
//!   partner keep their capacity.
//! - `poll_ready` reads an atomic flag that mirrors "the finished list is not empty" (set and
//!   cleared under the lock, with the list), so a polling event loop takes no lock.
//! - `drain` sleeps on a condition variable that workers signal only while a drain waits; it
//!   cannot fail. Dropping the engine drains it, then stops and joins every worker; a worker
//!   leaves only once the queue is empty, so no request (and no buffer a worker could write
//!   into) outlives the workers, whatever happened before.
//! - A panic while running a request (a bug) completes that request with `-EIO` and the worker
//!   carries on, so no request is ever lost and `drain` always ends.

use std::collections::VecDeque;
use std::os::unix::io::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::inflight::{clear_eventfd, immediate, Slot, Spares};
use super::sync::run_to_end;
use super::{AioCompletion, AioContext, AioEngine, AioError, AioOpcode, AioRequest, Iovec};
use crate::event_loop::ThreadSetupError;

const ENGINE: AioEngine = AioEngine::Threads;

/// Most workers one engine runs: the deepest queue the host storage sees from one drive. Eight
/// kept a virtio disk as busy as `aio=native` at queue depth 32, four reached about two thirds
/// of it (`docs/aio.md`); QEMU grows its pool to 64.
pub const MAX_WORKERS: usize = 8;

/// The name prefix of the workers' threads (`aio-worker-0`, ...).
pub const WORKER_NAME: &str = "aio-worker-";

/// A worker's stack: it holds a request's slot and the frames of a few system calls.
const WORKER_STACK: usize = 256 << 10;

/// A request a worker finished, and its completion.
type Finished = (Slot, AioCompletion);

/// The step a worker's set-up runs.
type SetupFn = dyn Fn() -> Result<(), ThreadSetupError> + Send + Sync;

/// A step every worker of an engine runs first thing on its thread, before it takes a request
/// (the VMM installs the worker's seccomp filter there); [`WorkerSetup::default`] does nothing.
/// Its failure on any worker is the engine's ([`AioError::WorkerSetup`]). Cloning it shares
/// the step; two values are equal when they share it (or both do nothing).
#[derive(Clone, Default)]
pub struct WorkerSetup(Option<Arc<SetupFn>>);

impl WorkerSetup {
    /// Runs `step` on each worker as it starts.
    pub fn new<F>(step: F) -> WorkerSetup
    where
        F: Fn() -> Result<(), ThreadSetupError> + Send + Sync + 'static,
    {
        WorkerSetup(Some(Arc::new(step)))
    }

    /// Whether a step is set.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Runs the step on the calling thread (the pool does so on each worker).
    pub fn run(&self) -> Result<(), ThreadSetupError> {
        match &self.0 {
            Some(step) => step(),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for WorkerSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() {
            "WorkerSetup(set)"
        } else {
            "WorkerSetup(none)"
        })
    }
}

impl PartialEq for WorkerSetup {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for WorkerSetup {}

/// What the user thread and the workers share.
#[derive(Debug)]
struct Shared {
    /// The borrowed file.
    fd: RawFd,
    /// Readable when finished requests wait in `State::done`.
    efd: EventFd,
    /// Whether `State::done` is non-empty, for `poll_ready` without the lock; written only
    /// under the lock, together with `done`.
    has_done: AtomicBool,
    state: Mutex<State>,
    /// Workers wait here for requests (or for `stop`).
    work: Condvar,
    /// `drain` waits here for finished requests, `new` for the workers to start.
    finished: Condvar,
}

#[derive(Debug)]
struct State {
    /// Requests no worker has taken yet, oldest first.
    queue: VecDeque<Slot>,
    /// Requests the workers finished, not yet taken by `reap` or `drain`.
    done: Vec<Finished>,
    /// Workers waiting for a request.
    idle: usize,
    /// Workers that have started (named their thread and ran the set-up step).
    started: usize,
    /// Workers whose set-up step failed (they ended), and the first failure.
    failed: usize,
    setup_error: Option<ThreadSetupError>,
    /// `drain` waits on `Shared::finished`.
    draining: bool,
    /// The engine is going away: workers leave once the queue is empty.
    stop: bool,
}

impl Shared {
    /// The state, also after a panic elsewhere: every update of it is a single push, pop, swap
    /// or count, so it is never left half-changed.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn signal(&self) -> Result<(), AioError> {
        self.efd.write(1).map_err(|source| AioError::Syscall {
            engine: ENGINE,
            call: "eventfd write",
            source,
        })
    }

    /// The next request for a worker, waiting for one; `None` once the engine stops and the
    /// queue is empty.
    fn next(&self) -> Option<Slot> {
        let mut st = self.lock();
        loop {
            if let Some(slot) = st.queue.pop_front() {
                return Some(slot);
            }
            if st.stop {
                return None;
            }
            st.idle += 1;
            st = self.work.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.idle -= 1;
        }
    }
}

/// A worker: runs the set-up step, then takes requests in order, runs each to its end, posts
/// it finished.
fn worker(shared: &Shared, setup: &WorkerSetup) {
    if let Err(e) = setup.run() {
        let mut st = shared.lock();
        st.failed += 1;
        st.setup_error.get_or_insert(e);
        drop(st);
        shared.finished.notify_one();
        return;
    }
    shared.lock().started += 1;
    shared.finished.notify_one();
    let mut slot = shared.next();
    while let Some(mut current) = slot.take() {
        let done = panic::catch_unwind(AssertUnwindSafe(|| run_to_end(shared.fd, &mut current)))
            .unwrap_or(AioCompletion {
                tag: current.req.tag,
                result: -i64::from(libc::EIO),
            });
        // Post the result and take the next request in one critical section.
        let (announce, wake_drain) = {
            let mut st = shared.lock();
            let announce = st.done.is_empty();
            st.done.push((current, done));
            shared.has_done.store(true, Ordering::Release);
            slot = st.queue.pop_front();
            (announce, st.draining)
        };
        if announce {
            if let Err(e) = shared.signal() {
                log::error!("{e}");
            }
        }
        if wake_drain {
            shared.finished.notify_one();
        }
        if slot.is_none() {
            slot = shared.next();
        }
    }
}

/// The thread-pool engine bound to one borrowed file descriptor.
#[derive(Debug)]
pub struct ThreadsContext {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Requests of the current batch on their way to the queue.
    staged: VecDeque<Slot>,
    /// Completions made without a worker ([`immediate`]), waiting for `reap`.
    ready: Vec<AioCompletion>,
    /// The user thread's half of `State::done`, swapped with it by `reap`.
    reaped: Vec<Finished>,
    spares: Spares,
    /// Requests handed to the workers whose completion has not been taken back.
    with_workers: usize,
}

impl ThreadsContext {
    /// Creates the engine for `fd` (which must stay open for the engine's lifetime) and starts
    /// `min(depth, MAX_WORKERS)` workers (at least one).
    pub fn new(fd: RawFd, depth: u32) -> Result<Self, AioError> {
        Self::with_setup(fd, depth, &WorkerSetup::default())
    }

    /// Like [`ThreadsContext::new`], each worker running `setup` first thing; fails if it
    /// fails on any worker (the others are stopped and joined first).
    pub fn with_setup(fd: RawFd, depth: u32, setup: &WorkerSetup) -> Result<Self, AioError> {
        let depth = depth.max(1) as usize;
        let efd = EventFd::new(EFD_NONBLOCK).map_err(|source| AioError::Syscall {
            engine: ENGINE,
            call: "eventfd",
            source,
        })?;
        let shared = Arc::new(Shared {
            fd,
            efd,
            has_done: AtomicBool::new(false),
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(depth),
                done: Vec::with_capacity(depth),
                idle: 0,
                started: 0,
                failed: 0,
                setup_error: None,
                draining: false,
                stop: false,
            }),
            work: Condvar::new(),
            finished: Condvar::new(),
        });
        let count = depth.min(MAX_WORKERS);
        let mut ctx = ThreadsContext {
            shared,
            workers: Vec::with_capacity(count),
            staged: VecDeque::with_capacity(depth),
            ready: Vec::with_capacity(depth),
            reaped: Vec::with_capacity(depth),
            spares: Spares::new(depth),
            with_workers: 0,
        };
        for i in 0..count {
            let shared = Arc::clone(&ctx.shared);
            let setup = setup.clone();
            let handle = thread::Builder::new()
                .name(format!("{WORKER_NAME}{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || worker(&shared, &setup))
                .map_err(|source| AioError::Syscall {
                    engine: ENGINE,
                    call: "worker thread creation",
                    source,
                })?;
            ctx.workers.push(handle);
        }
        // Return with every worker running, its thread named and set up.
        let mut st = ctx.shared.lock();
        while st.started + st.failed < count {
            st = ctx
                .shared
                .finished
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let failed = st.setup_error.take();
        drop(st);
        match failed {
            // Dropping `ctx` stops and joins the workers that did start.
            Some(source) => Err(AioError::WorkerSetup {
                engine: ENGINE,
                source,
            }),
            None => Ok(ctx),
        }
    }

    /// How many workers the pool runs.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Moves every finished request and every immediate completion to `out`.
    fn collect(&mut self, out: &mut Vec<AioCompletion>) {
        out.append(&mut self.ready);
        {
            let mut st = self.shared.lock();
            std::mem::swap(&mut st.done, &mut self.reaped);
            self.shared.has_done.store(false, Ordering::Release);
        }
        self.with_workers -= self.reaped.len();
        for (slot, done) in self.reaped.drain(..) {
            out.push(done);
            self.spares.keep(slot.req);
        }
    }

    /// Tells the workers to leave once the queue is empty, and joins them.
    fn stop_workers(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                log::error!("aio=threads: a worker ended with a panic");
            }
        }
    }
}

impl AioContext for ThreadsContext {
    fn engine(&self) -> AioEngine {
        ENGINE
    }

    fn supports(&self, _opcode: AioOpcode) -> bool {
        true
    }

    unsafe fn submit(&mut self, batch: &mut Vec<AioRequest>) -> Result<(), AioError> {
        let mut signal = false;
        for req in batch.drain(..) {
            if let Some(result) = immediate(&req, true) {
                self.ready.push(AioCompletion {
                    tag: req.tag,
                    result,
                });
                self.spares.keep(req);
                signal = true;
                continue;
            }
            self.staged.push_back(Slot::new(req));
        }
        let pushed = self.staged.len();
        if pushed > 0 {
            let idle = {
                let mut st = self.shared.lock();
                st.queue.append(&mut self.staged);
                st.idle
            };
            self.with_workers += pushed;
            // Busy workers look at the queue before they sleep: only idle ones need waking, all
            // of them with one call when there is work for each.
            if idle == 0 {
                // Nobody to wake.
            } else if pushed >= idle {
                self.shared.work.notify_all();
            } else {
                for _ in 0..pushed {
                    self.shared.work.notify_one();
                }
            }
        }
        if signal {
            self.shared.signal()?;
        }
        Ok(())
    }

    fn eventfd(&self) -> RawFd {
        self.shared.efd.as_raw_fd()
    }

    fn reap(&mut self, out: &mut Vec<AioCompletion>) -> Result<usize, AioError> {
        clear_eventfd(&self.shared.efd, ENGINE)?;
        let before = out.len();
        self.collect(out);
        Ok(out.len() - before)
    }

    fn in_flight(&self) -> usize {
        self.with_workers + self.ready.len()
    }

    fn poll_ready(&self) -> bool {
        !self.ready.is_empty() || self.shared.has_done.load(Ordering::Acquire)
    }

    fn drain(&mut self, out: &mut Vec<AioCompletion>) -> Result<(), AioError> {
        loop {
            self.collect(out);
            if self.with_workers == 0 {
                return Ok(());
            }
            let mut st = self.shared.lock();
            while st.done.is_empty() {
                st.draining = true;
                st = self
                    .shared
                    .finished
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            st.draining = false;
        }
    }

    fn iovec_buffer(&mut self) -> Vec<Iovec> {
        self.spares.take()
    }
}

impl Drop for ThreadsContext {
    fn drop(&mut self) {
        let mut lost = Vec::new();
        // Cannot fail; and the workers finish whatever is queued before they leave.
        let _ = self.drain(&mut lost);
        self.stop_workers();
    }
}
