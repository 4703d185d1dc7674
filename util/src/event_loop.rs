//! An epoll event loop whose file descriptors each carry a name and a handler, and a queue
//! of messages (closures) that other threads send to the loop's thread.
//!
//! ```text
//!   thread A: loop.add("blk0-queue0", notify_fd, handler) ──┐
//!                                                           ▼
//!   loop thread: epoll_wait ──► look up fd ──► call handler(events) ──► repeat
//!                     ▲
//!   any thread: loop.stop() writes the loop's own "stop" eventfd
//!   any thread: loop.post(f) queues f and writes the "call" eventfd; returns at once
//!   main thread: loop.call(f) queues f, writes the "call" eventfd, waits for f's result
//! ```
//!
//! Invariants:
//! - Handlers run on the thread that calls [`EventLoop::run`], one at a time.
//! - The handler table is not locked while a handler runs, so a handler may add or remove
//!   handlers (its own included) without deadlocking.
//! - Removing a handler from another thread while it runs is safe: the running call finishes,
//!   later events for that fd are ignored.
//! - Messages ([`EventLoop::post`], [`EventLoop::call`]) run on the loop's thread in the order
//!   they were sent. [`EventLoop::post`] never runs its closure on the caller's thread, so a
//!   thread that must not touch what the loop owns (a vCPU) can always use it. A `call` made on
//!   the loop's thread, or while no thread runs the loop, runs at once on the caller's thread,
//!   after the messages queued before it. Messages queued when `run` returns are run by that
//!   thread on its way out, so a caller never waits for a loop that has stopped.
//! - [`EventLoopThread`] is a loop on a thread of its own (an iothread): stopping it joins the
//!   thread, and only then does the loop's last message run. A set-up step given to
//!   [`EventLoopThread::spawn_with`] (the VMM installs the thread's seccomp filter there) runs
//!   on the new thread before its loop, and `spawn_with` returns only after it did: its error
//!   is the spawn's error, and no handler or message ever runs without it.
//! - Polling ([`EventLoop::set_poll_params`], off by default): before it sleeps, a loop with
//!   [`PollSource`]s ([`EventLoop::add_poll`]) spins up to its adaptive window calling their
//!   `poll` (no system calls); a source that finds work has its `run` called, and the loop only
//!   checks its fds without blocking (`epoll_wait` with timeout 0). Sources are told when a
//!   polling phase begins and ends, and are polled once more after it ended, before the loop
//!   sleeps, so nothing that arrived while their notifications were off waits for a wake-up
//!   that never comes. A message or a stop cuts polling short. `poll` module: the window's
//!   rules.

mod poll;

use std::collections::{HashMap, VecDeque};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::Instant;

pub use poll::{PollParams, PollSource, PollWindow, DEFAULT_GROW, DEFAULT_MAX_NS, INITIAL_NS};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What a handler tells the loop after it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerAction {
    /// Keep the handler registered.
    Keep,
    /// Unregister this handler (the fd is not closed: its owner closes it).
    Remove,
}

/// A callback run when its fd becomes ready; it receives the ready event set.
pub type Handler = Box<dyn FnMut(EventSet) -> HandlerAction + Send>;

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// Creating the epoll instance or the stop eventfd failed.
    #[error("cannot create the event loop")]
    Create(#[source] std::io::Error),
    /// Adding, changing or removing an fd in the epoll set failed.
    #[error("cannot register handler {name:?} (fd {fd}) with epoll")]
    Control {
        /// Name of the handler.
        name: String,
        /// The file descriptor.
        fd: RawFd,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A handler with this fd already exists.
    #[error("fd {fd} already has handler {existing:?}")]
    Duplicate {
        /// The file descriptor.
        fd: RawFd,
        /// Name of the handler already registered.
        existing: String,
    },
    /// `epoll_wait` failed.
    #[error("epoll_wait failed")]
    Wait(#[source] std::io::Error),
    /// A closure given to [`EventLoop::call`] ended without a result (it panicked).
    #[error("a call on the event-loop thread did not return")]
    CallLost,
    /// A poll source was given for an fd that has no handler.
    #[error("fd {fd} has no handler to attach a poll source to")]
    NotRegistered {
        /// The file descriptor.
        fd: RawFd,
    },
    /// The thread of an [`EventLoopThread`] could not be started.
    #[error("cannot start event-loop thread {name}")]
    Spawn {
        /// The thread's name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The set-up step of an [`EventLoopThread`] failed on its thread; the thread ended.
    #[error("cannot set up event-loop thread {name}")]
    Setup {
        /// The thread's name.
        name: String,
        /// The cause.
        #[source]
        source: ThreadSetupError,
    },
}

/// Why a thread's set-up step failed (see [`EventLoopThread::spawn_with`]).
pub type ThreadSetupError = Box<dyn std::error::Error + Send + Sync>;

/// A closure waiting to run on the loop's thread.
type Call = Box<dyn FnOnce() + Send>;

/// Who runs the loop, and the calls waiting for that thread.
#[derive(Default)]
struct Calls {
    runner: Option<ThreadId>,
    queue: VecDeque<Call>,
}

struct Registration {
    name: String,
    handler: Arc<Mutex<Handler>>,
    poll: Option<SharedPollSource>,
}

/// A poll source and its own adaptive window (as QEMU keeps one per handler: a queue whose
/// requests come quickly keeps polling paying off even while a slow disk's completions make
/// the engine's window shrink).
struct Polled {
    source: Box<dyn PollSource>,
    window: PollWindow,
}

type SharedPollSource = Arc<Mutex<Polled>>;

/// What polling did so far (for tests and diagnostics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStats {
    /// The window of the next turn (the largest of the sources'), ns.
    pub window_ns: u64,
    /// Turns whose polling found work.
    pub found: u64,
    /// Polling phases that ended (the sources' notifications turned back on).
    pub ended: u64,
}

/// The polling state of the thread that runs the loop.
struct Poller {
    /// The parameters the sources' windows were made for.
    params: PollParams,
    /// Sources were told polling began and not yet that it ended.
    started: bool,
    /// The sources as of `generation`, with their fds.
    sources: Vec<(RawFd, SharedPollSource)>,
    generation: u64,
    /// Sources whose `poll` found work this turn.
    ready: Vec<(RawFd, SharedPollSource)>,
}

/// How a polling phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spin {
    /// A source has work.
    Found,
    /// A message or stop arrived: its eventfd is readable.
    Woken,
    /// The window passed with nothing found.
    Expired,
}

/// An epoll loop of named handlers, shareable between threads (`Arc<EventLoop>`).
pub struct EventLoop {
    epoll: Epoll,
    stop_event: EventFd,
    call_event: EventFd,
    calls: Mutex<Calls>,
    handlers: Mutex<HashMap<RawFd, Registration>>,
    /// Set by `post`, `call` and `stop` after their eventfd write (so a loop that sees it finds
    /// the eventfd readable); a polling loop that sees it clears it and looks at its fds
    /// without blocking.
    woken: AtomicBool,
    poll_params: Mutex<PollParams>,
    /// Bumped whenever a poll source is added or removed.
    poll_generation: AtomicU64,
    poller: Mutex<Poller>,
    found: AtomicU64,
    ended: AtomicU64,
    window_ns: AtomicU64,
}

impl EventLoop {
    /// Creates an empty loop.
    pub fn new() -> Result<Arc<Self>, EventLoopError> {
        let epoll = Epoll::new().map_err(EventLoopError::Create)?;
        let stop_event = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::Create)?;
        let call_event = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::Create)?;
        for (name, fd) in [("stop", &stop_event), ("call", &call_event)] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, fd.as_raw_fd() as u64),
                )
                .map_err(|source| EventLoopError::Control {
                    name: name.into(),
                    fd: fd.as_raw_fd(),
                    source,
                })?;
        }
        Ok(Arc::new(EventLoop {
            epoll,
            stop_event,
            call_event,
            calls: Mutex::new(Calls::default()),
            handlers: Mutex::new(HashMap::new()),
            woken: AtomicBool::new(false),
            poll_params: Mutex::new(PollParams::OFF),
            poll_generation: AtomicU64::new(0),
            poller: Mutex::new(Poller {
                params: PollParams::OFF,
                started: false,
                sources: Vec::new(),
                generation: 0,
                ready: Vec::new(),
            }),
            found: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            window_ns: AtomicU64::new(0),
        }))
    }

    /// Sets how the loop polls before it sleeps ([`PollParams::OFF`] by default); callable
    /// from any thread, in force from the loop's next turn, with the window back at 0.
    pub fn set_poll_params(&self, params: PollParams) {
        *self.poll_params.lock().unwrap_or_else(|e| e.into_inner()) = params;
    }

    /// How the loop polls.
    pub fn poll_params(&self) -> PollParams {
        *self.poll_params.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What polling did so far.
    pub fn poll_stats(&self) -> PollStats {
        PollStats {
            window_ns: self.window_ns.load(Ordering::Relaxed),
            found: self.found.load(Ordering::Relaxed),
            ended: self.ended.load(Ordering::Relaxed),
        }
    }

    /// Attaches `source` to the handler of `fd`: while the loop polls, `source.poll()` stands
    /// in for the fd becoming readable and `source.run()` for the handler. Removed with the
    /// handler. Replaces an earlier source of the same fd.
    pub fn add_poll(&self, fd: RawFd, source: Box<dyn PollSource>) -> Result<(), EventLoopError> {
        let mut handlers = self.lock_handlers();
        let registration = handlers
            .get_mut(&fd)
            .ok_or(EventLoopError::NotRegistered { fd })?;
        let window = PollWindow::new(self.poll_params());
        registration.poll = Some(Arc::new(Mutex::new(Polled { source, window })));
        self.poll_generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Registers `handler` under `name` for `events` on `fd`.
    pub fn add(
        &self,
        name: &str,
        fd: RawFd,
        events: EventSet,
        handler: Handler,
    ) -> Result<(), EventLoopError> {
        let mut handlers = self.lock_handlers();
        if let Some(existing) = handlers.get(&fd) {
            return Err(EventLoopError::Duplicate {
                fd,
                existing: existing.name.clone(),
            });
        }
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(events, fd as u64),
            )
            .map_err(|source| EventLoopError::Control {
                name: name.to_string(),
                fd,
                source,
            })?;
        handlers.insert(
            fd,
            Registration {
                name: name.to_string(),
                handler: Arc::new(Mutex::new(handler)),
                poll: None,
            },
        );
        log::debug!("event loop: added {name} (fd {fd})");
        Ok(())
    }

    /// Unregisters the handler of `fd`; unknown fds are ignored.
    pub fn remove(&self, fd: RawFd) -> Result<(), EventLoopError> {
        let mut handlers = self.lock_handlers();
        if let Some(registration) = handlers.remove(&fd) {
            if registration.poll.is_some() {
                self.poll_generation.fetch_add(1, Ordering::AcqRel);
            }
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                .map_err(|source| EventLoopError::Control {
                    name: registration.name.clone(),
                    fd,
                    source,
                })?;
            log::debug!("event loop: removed {} (fd {fd})", registration.name);
        }
        Ok(())
    }

    /// Names of the registered handlers, sorted (for diagnostics and tests).
    pub fn handler_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .lock_handlers()
            .values()
            .map(|r| r.name.clone())
            .collect();
        names.sort();
        names
    }

    /// Asks [`EventLoop::run`] to return; callable from any thread or handler.
    pub fn stop(&self) {
        // A full eventfd counter already means "stop requested".
        let _ = self.stop_event.write(1);
        self.woken.store(true, Ordering::Release);
    }

    /// Sends `f` to the loop's thread and returns at once; `f` runs there after every message
    /// sent before it (also when the loop is not running yet: at its next turn, or when its
    /// `run` returns).
    pub fn post<F>(&self, f: F)
    where
        F: FnOnce() + Send + 'static,
    {
        self.lock_calls().queue.push_back(Box::new(f));
        // A full counter still wakes the loop, which then runs every queued message.
        let _ = self.call_event.write(1);
        self.woken.store(true, Ordering::Release);
    }

    /// Runs `f` on the loop's thread and returns its result; the caller waits. Runs `f` at
    /// once, after the messages queued before it, when called on the loop's thread (from a
    /// handler) or when no thread is inside [`EventLoop::run`]. The caller must not hold a
    /// lock that the loop's handlers take, and must not be the thread of another loop that
    /// this one may wait for (only the main thread waits for iothreads).
    pub fn call<R, F>(&self, f: F) -> Result<R, EventLoopError>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (done, result) = mpsc::sync_channel(1);
        let run_here = {
            let mut calls = self.lock_calls();
            match calls.runner {
                Some(runner) if runner != thread::current().id() => {
                    calls.queue.push_back(Box::new(move || {
                        // The caller waits on `result`, so the receiver is alive.
                        let _ = done.send(f());
                    }));
                    None
                }
                _ => Some(f),
            }
        };
        // Run here without the lock held: `f` and the queued messages may call again.
        if let Some(f) = run_here {
            self.run_queued();
            return Ok(f());
        }
        let _ = self.call_event.write(1);
        self.woken.store(true, Ordering::Release);
        result.recv().map_err(|_| EventLoopError::CallLost)
    }

    /// Whether the calling thread may touch what the loop owns: it runs the loop, or no
    /// thread does.
    pub fn is_current(&self) -> bool {
        self.lock_calls()
            .runner
            .is_none_or(|runner| runner == thread::current().id())
    }

    /// Unregisters every handler and drops them (after the table's lock is released, so a
    /// handler's destructor may use the loop).
    pub fn clear(&self) {
        let handlers = std::mem::take(&mut *self.lock_handlers());
        self.poll_generation.fetch_add(1, Ordering::AcqRel);
        for fd in handlers.keys() {
            // Best effort: a closed fd has already left the epoll set.
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, *fd, EpollEvent::default());
        }
        drop(handlers);
    }

    /// Runs handlers until [`EventLoop::stop`] is called.
    pub fn run(&self) -> Result<(), EventLoopError> {
        self.lock_calls().runner = Some(thread::current().id());
        let result = (|| {
            while self.run_once(-1)? {}
            Ok(())
        })();
        // Sources polled last turn get their notifications back before the loop goes away.
        drop(self.end_polling(&mut self.lock_poller()));
        self.lock_calls().runner = None;
        self.run_queued();
        result
    }

    /// Runs the queued messages, oldest first, including those they queue themselves.
    fn run_queued(&self) {
        loop {
            let Some(call) = self.lock_calls().queue.pop_front() else {
                return;
            };
            call();
        }
    }

    /// Waits up to `timeout_ms` (-1: forever) and runs the handlers of the ready fds; a loop
    /// that polls ([`EventLoop::set_poll_params`]) first polls its sources for up to its
    /// window. Returns `false` once a stop was requested.
    pub fn run_once(&self, timeout_ms: i32) -> Result<bool, EventLoopError> {
        let start = Instant::now();
        let (ready, polling) = self.poll_sources(timeout_ms);
        let timeout_ms = if ready.is_empty() && polling != Some(Spin::Woken) {
            timeout_ms
        } else {
            0
        };
        let mut events = [EpollEvent::default(); 32];
        let waited = loop {
            match self.epoll.wait(timeout_ms, &mut events) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.give_back(ready);
                    return Err(EventLoopError::Wait(e));
                }
            }
        };
        if polling.is_some() {
            let block_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.adjust_windows(block_ns, &ready, &events[..waited]);
        }
        self.run_ready(&ready);
        self.give_back(ready);
        let mut keep_running = true;
        for event in &events[..waited] {
            let fd = event.fd();
            if fd == self.stop_event.as_raw_fd() {
                let _ = self.stop_event.read();
                keep_running = false;
                continue;
            }
            if fd == self.call_event.as_raw_fd() {
                let _ = self.call_event.read();
                self.run_queued();
                continue;
            }
            let handler = match self.lock_handlers().get(&fd) {
                Some(registration) => registration.handler.clone(),
                None => continue,
            };
            let action = {
                let mut handler = handler.lock().unwrap_or_else(|e| e.into_inner());
                (*handler)(event.event_set())
            };
            if action == HandlerAction::Remove {
                let still_same = self
                    .lock_handlers()
                    .get(&fd)
                    .is_some_and(|r| Arc::ptr_eq(&r.handler, &handler));
                if still_same {
                    self.remove(fd)?;
                }
            }
        }
        Ok(keep_running)
    }

    /// The polling part of a turn: returns the sources that found work, and how polling went
    /// (`None`: the loop does not poll this turn, so the window is not adjusted either).
    fn poll_sources(&self, timeout_ms: i32) -> (Vec<(RawFd, SharedPollSource)>, Option<Spin>) {
        let params = self.poll_params();
        let mut poller = self.lock_poller();
        let changed = poller.params != params;
        if changed {
            poller.params = params;
            self.window_ns.store(0, Ordering::Relaxed);
        }
        if !params.enabled() || timeout_ms == 0 {
            // A loop that stopped polling gives its sources their notifications back.
            return (self.end_polling(&mut poller), None);
        }
        let generation = self.poll_generation.load(Ordering::Acquire);
        if poller.generation != generation || changed {
            poller.sources = self
                .lock_handlers()
                .iter()
                .filter_map(|(fd, r)| r.poll.clone().map(|p| (*fd, p)))
                .collect();
            poller.generation = generation;
        }
        if poller.sources.is_empty() {
            return (Vec::new(), None);
        }
        let mut ready = std::mem::take(&mut poller.ready);
        let mut window = 0;
        for (_, source) in &poller.sources {
            let mut polled = lock_source(source);
            if polled.window.params() != params {
                polled.window = PollWindow::new(params);
            }
            window = window.max(polled.window.ns());
        }
        if timeout_ms > 0 {
            window = window.min(u64::from(timeout_ms.unsigned_abs()) * 1_000_000);
        }
        let mut spin = Spin::Expired;
        if window > 0 {
            if self.woken.swap(false, Ordering::AcqRel) {
                spin = Spin::Woken;
            } else {
                if !poller.started {
                    for (_, source) in &poller.sources {
                        lock_source(source).source.begin();
                    }
                    poller.started = true;
                }
                spin = self.spin(&poller.sources, window, &mut ready);
            }
        }
        if spin == Spin::Found {
            self.found.fetch_add(1, Ordering::Relaxed);
        }
        if spin == Spin::Expired {
            // About to sleep: notifications back on, then one more look (the classic race:
            // work that arrived while they were off would otherwise wait for nothing).
            ready.extend(self.end_polling(&mut poller));
        }
        (ready, Some(spin))
    }

    /// Polls `sources` until one finds work, a message arrives, or `window_ns` passed.
    fn spin(
        &self,
        sources: &[(RawFd, SharedPollSource)],
        window_ns: u64,
        ready: &mut Vec<(RawFd, SharedPollSource)>,
    ) -> Spin {
        let start = Instant::now();
        loop {
            for (fd, source) in sources {
                if lock_source(source).source.poll() {
                    ready.push((*fd, source.clone()));
                }
            }
            if !ready.is_empty() {
                return Spin::Found;
            }
            // The flag is a hint: the eventfd that follows it is what the turn acts on, so a
            // flag left over from a message already run costs one look, never a wait.
            if self.woken.swap(false, Ordering::AcqRel) {
                return Spin::Woken;
            }
            if start.elapsed().as_nanos() >= u128::from(window_ns) {
                return Spin::Expired;
            }
            std::hint::spin_loop();
        }
    }

    /// Ends a polling phase, if one is on: every source turns its notifications back on and
    /// is polled once more. Returns the sources that found work then.
    fn end_polling(&self, poller: &mut Poller) -> Vec<(RawFd, SharedPollSource)> {
        let mut ready = std::mem::take(&mut poller.ready);
        if !poller.started {
            return ready;
        }
        poller.started = false;
        self.ended.fetch_add(1, Ordering::Relaxed);
        for (fd, source) in &poller.sources {
            let mut guard = lock_source(source);
            guard.source.end();
            if guard.source.poll() {
                ready.push((*fd, source.clone()));
            }
        }
        ready
    }

    /// Adapts the window of every source that had work this turn (found by polling, or its fd
    /// fired) to the turn's block time.
    fn adjust_windows(
        &self,
        block_ns: u64,
        ready: &[(RawFd, SharedPollSource)],
        events: &[EpollEvent],
    ) {
        let poller = self.lock_poller();
        let mut largest = 0;
        for (fd, source) in &poller.sources {
            let mut polled = lock_source(source);
            let had_work =
                ready.iter().any(|(f, _)| f == fd) || events.iter().any(|e| e.fd() == *fd);
            if had_work {
                polled.window.adjust(block_ns);
            }
            largest = largest.max(polled.window.ns());
        }
        self.window_ns.store(largest, Ordering::Relaxed);
    }

    /// Runs the sources that found work, skipping any whose handler was removed meanwhile.
    fn run_ready(&self, ready: &[(RawFd, SharedPollSource)]) {
        for (fd, source) in ready {
            let registered = self
                .lock_handlers()
                .get(fd)
                .and_then(|r| r.poll.as_ref())
                .is_some_and(|p| Arc::ptr_eq(p, source));
            if registered {
                lock_source(source).source.run();
            }
        }
    }

    /// Returns the (emptied) list of ready sources for the next turn to reuse.
    fn give_back(&self, mut ready: Vec<(RawFd, SharedPollSource)>) {
        if ready.capacity() == 0 {
            // Nothing worth keeping (a turn that did not poll).
            return;
        }
        ready.clear();
        let mut poller = self.lock_poller();
        if poller.ready.capacity() < ready.capacity() {
            poller.ready = ready;
        }
    }

    fn lock_handlers(&self) -> std::sync::MutexGuard<'_, HashMap<RawFd, Registration>> {
        self.handlers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_poller(&self) -> MutexGuard<'_, Poller> {
        self.poller.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn lock_source(source: &SharedPollSource) -> MutexGuard<'_, Polled> {
    source.lock().unwrap_or_else(|e| e.into_inner())
}

/// An event loop running on a thread of its own (an iothread), stopped and joined when
/// dropped.
pub struct EventLoopThread {
    name: String,
    event_loop: Arc<EventLoop>,
    thread: Option<JoinHandle<()>>,
    tid: i32,
}

impl EventLoopThread {
    /// Starts a thread named `name` that runs a new loop until [`EventLoopThread::stop`].
    pub fn spawn(name: &str) -> Result<EventLoopThread, EventLoopError> {
        Self::spawn_with(name, || Ok(()))
    }

    /// Like [`EventLoopThread::spawn`], running `setup` on the new thread before its loop;
    /// returns once `setup` has run. If it fails, the thread ends and so does the spawn, with
    /// [`EventLoopError::Setup`].
    pub fn spawn_with<S>(name: &str, setup: S) -> Result<EventLoopThread, EventLoopError>
    where
        S: FnOnce() -> Result<(), ThreadSetupError> + Send + 'static,
    {
        let event_loop = EventLoop::new()?;
        let runner = event_loop.clone();
        let (started, outcome) = mpsc::sync_channel(1);
        let thread_name = name.to_string();
        let thread = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                if let Err(e) = setup() {
                    let _ = started.send(Err(e));
                    return;
                }
                // SAFETY: gettid has no preconditions.
                let _ = started.send(Ok(unsafe { libc::gettid() }));
                if let Err(e) = runner.run() {
                    log::error!("event-loop thread {thread_name}: {e}");
                }
            })
            .map_err(|source| EventLoopError::Spawn {
                name: name.to_string(),
                source,
            })?;
        let tid = match outcome.recv() {
            Ok(Ok(tid)) => tid,
            Ok(Err(source)) => {
                let _ = thread.join();
                return Err(EventLoopError::Setup {
                    name: name.to_string(),
                    source,
                });
            }
            Err(_) => 0,
        };
        Ok(EventLoopThread {
            name: name.to_string(),
            event_loop,
            thread: Some(thread),
            tid,
        })
    }

    /// The loop, to register handlers on and send messages to.
    pub fn event_loop(&self) -> &Arc<EventLoop> {
        &self.event_loop
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The thread's kernel id (for `/proc/self/task/<tid>` and cgroup `tasks` files).
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Stops the loop and joins the thread; messages still queued run on that thread first.
    /// Calling it again does nothing.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.event_loop.stop();
        if thread.join().is_err() {
            log::error!("event-loop thread {} panicked", self.name);
        }
    }
}

impl Drop for EventLoopThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn handler_runs_when_its_eventfd_is_written() {
        let event_loop = EventLoop::new().unwrap();
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (hits2, fd2) = (hits.clone(), fd.try_clone().unwrap());
        event_loop
            .add(
                "test",
                fd.as_raw_fd(),
                EventSet::IN,
                Box::new(move |_| {
                    fd2.read().unwrap();
                    hits2.fetch_add(1, Ordering::SeqCst);
                    HandlerAction::Keep
                }),
            )
            .unwrap();
        fd.write(1).unwrap();
        assert!(event_loop.run_once(1000).unwrap());
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(event_loop.handler_names(), vec!["test".to_string()]);
    }

    #[test]
    fn duplicate_fd_is_refused_and_remove_action_unregisters() {
        let event_loop = EventLoop::new().unwrap();
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let raw = fd.as_raw_fd();
        event_loop
            .add(
                "once",
                raw,
                EventSet::IN,
                Box::new(|_| HandlerAction::Remove),
            )
            .unwrap();
        let err = event_loop
            .add(
                "again",
                raw,
                EventSet::IN,
                Box::new(|_| HandlerAction::Keep),
            )
            .unwrap_err();
        assert!(matches!(err, EventLoopError::Duplicate { .. }));
        fd.write(1).unwrap();
        event_loop.run_once(1000).unwrap();
        assert!(event_loop.handler_names().is_empty());
    }

    #[test]
    fn stop_from_another_thread_ends_run() {
        let event_loop = EventLoop::new().unwrap();
        let runner = event_loop.clone();
        let thread = std::thread::spawn(move || runner.run());
        event_loop.stop();
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn call_runs_at_once_when_no_thread_runs_the_loop() {
        let event_loop = EventLoop::new().unwrap();
        let ran_on = event_loop.call(|| std::thread::current().id()).unwrap();
        assert_eq!(ran_on, std::thread::current().id());
    }

    #[test]
    fn call_runs_on_the_loop_thread_and_nested_calls_run_in_place() {
        let event_loop = EventLoop::new().unwrap();
        let runner = event_loop.clone();
        let thread = std::thread::spawn(move || {
            runner.run().unwrap();
            std::thread::current().id()
        });
        // Until `run` has started, a call may run here; wait until one runs there.
        let inner = event_loop.clone();
        let (outer_id, nested_id) = loop {
            let inner = inner.clone();
            let ids = event_loop
                .call(move || {
                    let here = std::thread::current().id();
                    (
                        here,
                        inner.call(move || std::thread::current().id()).unwrap(),
                    )
                })
                .unwrap();
            if ids.0 != std::thread::current().id() {
                break ids;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(outer_id, nested_id);
        event_loop.stop();
        assert_eq!(thread.join().unwrap(), outer_id);
    }

    #[test]
    fn calls_queued_behind_a_busy_handler_run_even_when_the_loop_stops() {
        let event_loop = EventLoop::new().unwrap();
        let busy = EventFd::new(EFD_NONBLOCK).unwrap();
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        event_loop
            .add(
                "busy",
                busy.as_raw_fd(),
                EventSet::IN,
                Box::new(move |_| {
                    entered_tx.send(()).unwrap();
                    release_rx.lock().unwrap().recv().unwrap();
                    HandlerAction::Remove
                }),
            )
            .unwrap();
        let runner = event_loop.clone();
        let thread = std::thread::spawn(move || runner.run());
        busy.write(1).unwrap();
        entered.recv().unwrap();
        let caller_loop = event_loop.clone();
        let caller = std::thread::spawn(move || caller_loop.call(|| 42).unwrap());
        // The call is queued while the handler holds the loop; then the loop is stopped.
        while !caller.is_finished() && event_loop.lock_calls().queue.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        event_loop.stop();
        release.send(()).unwrap();
        assert_eq!(caller.join().unwrap(), 42);
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn posted_messages_never_run_on_the_sender_and_keep_their_order() {
        let event_loop = EventLoop::new().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..3 {
            let order = order.clone();
            event_loop.post(move || order.lock().unwrap().push(i));
        }
        assert!(
            order.lock().unwrap().is_empty(),
            "post returned before running"
        );
        // A call made while nobody runs the loop runs the earlier messages first.
        let tail = order.clone();
        event_loop
            .call(move || tail.lock().unwrap().push(3))
            .unwrap();
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn an_event_loop_thread_runs_messages_there_and_joins_on_stop() {
        let mut thread = EventLoopThread::spawn("test-iothread").unwrap();
        let weak = Arc::downgrade(thread.event_loop());
        let (tx, rx) = std::sync::mpsc::channel();
        thread.event_loop().post(move || {
            tx.send(std::thread::current().name().map(str::to_string))
                .unwrap()
        });
        assert_eq!(rx.recv().unwrap().as_deref(), Some("test-iothread"));
        let here = std::thread::current().id();
        assert_ne!(
            thread
                .event_loop()
                .call(move || std::thread::current().id())
                .unwrap(),
            here
        );
        assert!(thread.tid() > 0);
        // A message sent while the thread stops still runs, on that thread.
        let ran = Arc::new(AtomicUsize::new(0));
        let ran2 = ran.clone();
        thread.event_loop().post(move || {
            ran2.fetch_add(1, Ordering::SeqCst);
        });
        thread.stop();
        thread.stop();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        drop(thread);
        assert!(
            weak.upgrade().is_none(),
            "the loop is freed with its thread"
        );
    }

    #[test]
    fn a_set_up_step_runs_on_the_new_thread_first_and_its_failure_is_the_spawn_error() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut thread = EventLoopThread::spawn_with("test-setup", move || {
            tx.send(std::thread::current().name().map(str::to_string))?;
            Ok(())
        })
        .unwrap();
        // spawn_with returned after the step had run, on the new thread.
        assert_eq!(rx.try_recv().unwrap().as_deref(), Some("test-setup"));
        thread.stop();

        let loops = Arc::new(Mutex::new(None));
        let seen = loops.clone();
        let err = EventLoopThread::spawn_with("test-setup-fails", move || {
            *seen.lock().unwrap() = Some(std::thread::current().id());
            Err("refused".into())
        })
        .err()
        .expect("a failed set-up step fails the spawn");
        assert!(
            matches!(&err, EventLoopError::Setup { name, source }
                if name == "test-setup-fails" && source.to_string() == "refused"),
            "{err:?}"
        );
        assert!(loops.lock().unwrap().is_some());
    }

    #[test]
    fn clear_drops_every_handler() {
        let event_loop = EventLoop::new().unwrap();
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let token = Arc::new(());
        let held = token.clone();
        event_loop
            .add(
                "holder",
                fd.as_raw_fd(),
                EventSet::IN,
                Box::new(move |_| {
                    let _ = &held;
                    HandlerAction::Keep
                }),
            )
            .unwrap();
        assert_eq!(Arc::strong_count(&token), 2);
        event_loop.clear();
        assert_eq!(Arc::strong_count(&token), 1);
        assert!(event_loop.handler_names().is_empty());
        fd.write(1).unwrap();
        assert!(event_loop.run_once(0).unwrap(), "no handler left to run");
    }

    /// A source whose work is a flag other code sets, counting what the loop asks of it.
    #[derive(Default)]
    struct Probe {
        work: AtomicBool,
        /// `end` sets `work` (work that arrived while notifications were off, unannounced).
        work_on_end: AtomicBool,
        polls: AtomicUsize,
        runs: AtomicUsize,
        begins: AtomicUsize,
        ends: AtomicUsize,
    }

    struct ProbeSource(Arc<Probe>);

    impl PollSource for ProbeSource {
        fn poll(&mut self) -> bool {
            self.0.polls.fetch_add(1, Ordering::SeqCst);
            self.0.work.load(Ordering::SeqCst)
        }
        fn run(&mut self) {
            self.0.work.store(false, Ordering::SeqCst);
            self.0.runs.fetch_add(1, Ordering::SeqCst);
        }
        fn begin(&mut self) {
            self.0.begins.fetch_add(1, Ordering::SeqCst);
        }
        fn end(&mut self) {
            self.0.ends.fetch_add(1, Ordering::SeqCst);
            if self.0.work_on_end.swap(false, Ordering::SeqCst) {
                self.0.work.store(true, Ordering::SeqCst);
            }
        }
    }

    /// A loop with one probe on an eventfd that only the test writes (then its handler clears
    /// it): work the probe's flag announces can only be found by polling.
    fn probed_loop(params: PollParams) -> (Arc<EventLoop>, Arc<Probe>, EventFd) {
        let event_loop = EventLoop::new().unwrap();
        event_loop.set_poll_params(params);
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let clear = fd.try_clone().unwrap();
        event_loop
            .add(
                "probe",
                fd.as_raw_fd(),
                EventSet::IN,
                Box::new(move |_| {
                    let _ = clear.read();
                    HandlerAction::Keep
                }),
            )
            .unwrap();
        let probe = Arc::new(Probe::default());
        event_loop
            .add_poll(fd.as_raw_fd(), Box::new(ProbeSource(probe.clone())))
            .unwrap();
        (event_loop, probe, fd)
    }

    /// Polls with no practical maximum, so each turn's wait grows the window.
    const UNBOUNDED: PollParams = PollParams {
        max_ns: 1 << 50,
        grow: 0,
        shrink: 0,
    };

    #[test]
    fn polling_finds_work_without_the_fd_and_keeps_notifications_off_meanwhile() {
        let (event_loop, probe, fd) = probed_loop(UNBOUNDED);
        // Turn 1: the window is 0, nothing is polled; the fd's event grows the window.
        fd.write(1).unwrap();
        assert!(event_loop.run_once(1).unwrap());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 0);
        assert_eq!(event_loop.poll_stats().window_ns, INITIAL_NS);
        // Turn 2: polling begins and finds the work; the source runs, notifications stay off.
        probe.work.store(true, Ordering::SeqCst);
        assert!(event_loop.run_once(1).unwrap());
        assert_eq!(probe.runs.load(Ordering::SeqCst), 1);
        assert_eq!(probe.begins.load(Ordering::SeqCst), 1);
        assert_eq!(probe.ends.load(Ordering::SeqCst), 0);
        assert_eq!(event_loop.poll_stats().found, 1);
        // Turn 3: nothing within the window; before sleeping the source gets its
        // notifications back and is polled once more: what arrived meanwhile runs now.
        probe.work_on_end.store(true, Ordering::SeqCst);
        assert!(event_loop.run_once(1).unwrap());
        assert_eq!(probe.ends.load(Ordering::SeqCst), 1);
        assert_eq!(
            probe.runs.load(Ordering::SeqCst),
            2,
            "work found by the last look after polling ended was lost"
        );
        assert_eq!(event_loop.poll_stats().ended, 1);
    }

    #[test]
    fn a_loop_that_does_not_poll_never_calls_its_sources() {
        let (event_loop, probe, fd) = probed_loop(PollParams::OFF);
        probe.work.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            assert!(event_loop.run_once(1).unwrap());
        }
        fd.write(1).unwrap();
        assert!(event_loop.run_once(1000).unwrap());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 0);
        assert_eq!(probe.runs.load(Ordering::SeqCst), 0);
        assert_eq!(probe.begins.load(Ordering::SeqCst), 0);
        assert_eq!(event_loop.poll_stats(), PollStats::default());
    }

    #[test]
    fn turning_polling_off_gives_notifications_back() {
        let (event_loop, probe, fd) = probed_loop(UNBOUNDED);
        fd.write(1).unwrap();
        event_loop.run_once(1).unwrap();
        probe.work.store(true, Ordering::SeqCst);
        event_loop.run_once(1).unwrap();
        assert_eq!(probe.begins.load(Ordering::SeqCst), 1);
        event_loop.set_poll_params(PollParams::OFF);
        probe.work_on_end.store(true, Ordering::SeqCst);
        event_loop.run_once(1).unwrap();
        assert_eq!(probe.ends.load(Ordering::SeqCst), 1);
        assert_eq!(probe.runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_removed_handler_takes_its_poll_source_along() {
        let (event_loop, probe, fd) = probed_loop(UNBOUNDED);
        event_loop.run_once(1).unwrap();
        event_loop.remove(fd.as_raw_fd()).unwrap();
        probe.work.store(true, Ordering::SeqCst);
        event_loop.run_once(1).unwrap();
        assert_eq!(probe.runs.load(Ordering::SeqCst), 0);
        let err = event_loop
            .add_poll(fd.as_raw_fd(), Box::new(ProbeSource(probe.clone())))
            .unwrap_err();
        assert!(matches!(err, EventLoopError::NotRegistered { .. }));
    }

    #[test]
    fn messages_and_stop_cut_a_long_polling_window_short() {
        // Windows grow a thousandfold per turn up to about 18 minutes: a loop that ignored
        // messages while polling would not answer this test in any useful time.
        let params = PollParams {
            max_ns: 1 << 40,
            grow: 1000,
            shrink: 0,
        };
        let (event_loop, _probe, fd) = probed_loop(params);
        // 0 -> 4 µs -> 4 ms -> 4 s: each turn's event comes later than its window (10 ms).
        fd.write(1).unwrap();
        event_loop.run_once(100).unwrap();
        for _ in 0..2 {
            let late = fd.try_clone().unwrap();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(10));
                late.write(1).unwrap();
            });
            event_loop.run_once(-1).unwrap();
            writer.join().unwrap();
        }
        assert!(event_loop.poll_stats().window_ns >= 4_000_000_000);
        let runner = event_loop.clone();
        let thread = std::thread::spawn(move || runner.run());
        // Wait until the loop runs on its thread (a call there, not here).
        let here = std::thread::current().id();
        while event_loop
            .call(move || std::thread::current().id())
            .unwrap()
            == here
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(event_loop.call(|| 7).unwrap(), 7);
        event_loop.stop();
        thread.join().unwrap().unwrap();
    }
}
