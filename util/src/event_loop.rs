//! An epoll event loop whose file descriptors each carry a name and a handler.
//!
//! ```text
//!   thread A: loop.add("blk0-queue0", notify_fd, handler) ──┐
//!                                                           ▼
//!   loop thread: epoll_wait ──► look up fd ──► call handler(events) ──► repeat
//!                     ▲
//!   any thread: loop.stop() writes the loop's own "stop" eventfd
//!   any thread: loop.call(f) queues f, writes the "call" eventfd, waits for f's result
//! ```
//!
//! Invariants:
//! - Handlers run on the thread that calls [`EventLoop::run`], one at a time.
//! - The handler table is not locked while a handler runs, so a handler may add or remove
//!   handlers (its own included) without deadlocking.
//! - Removing a handler from another thread while it runs is safe: the running call finishes,
//!   later events for that fd are ignored.
//! - [`EventLoop::call`] runs a closure on the thread inside [`EventLoop::run`], or at once on
//!   the caller's thread when that is the loop's thread or no thread runs the loop. Calls
//!   queued when `run` returns are run by that thread on its way out, so a caller never waits
//!   for a loop that has stopped.

use std::collections::{HashMap, VecDeque};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, ThreadId};

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
}

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
}

/// An epoll loop of named handlers, shareable between threads (`Arc<EventLoop>`).
pub struct EventLoop {
    epoll: Epoll,
    stop_event: EventFd,
    call_event: EventFd,
    calls: Mutex<Calls>,
    handlers: Mutex<HashMap<RawFd, Registration>>,
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
        }))
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
            },
        );
        log::debug!("event loop: added {name} (fd {fd})");
        Ok(())
    }

    /// Unregisters the handler of `fd`; unknown fds are ignored.
    pub fn remove(&self, fd: RawFd) -> Result<(), EventLoopError> {
        let mut handlers = self.lock_handlers();
        if let Some(registration) = handlers.remove(&fd) {
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
    }

    /// Runs `f` on the loop's thread and returns its result; the caller waits. Runs `f` at
    /// once when called on the loop's thread (from a handler) or when no thread is inside
    /// [`EventLoop::run`]. The caller must not hold a lock that the loop's handlers take.
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
        // Run here without the lock held: `f` may call again.
        if let Some(f) = run_here {
            return Ok(f());
        }
        // A full counter still wakes the loop, which then runs every queued call.
        let _ = self.call_event.write(1);
        result.recv().map_err(|_| EventLoopError::CallLost)
    }

    /// Runs handlers until [`EventLoop::stop`] is called.
    pub fn run(&self) -> Result<(), EventLoopError> {
        self.lock_calls().runner = Some(thread::current().id());
        let result = (|| {
            while self.run_once(-1)? {}
            Ok(())
        })();
        let left = {
            let mut calls = self.lock_calls();
            calls.runner = None;
            std::mem::take(&mut calls.queue)
        };
        for call in left {
            call();
        }
        result
    }

    /// Runs the calls queued by [`EventLoop::call`].
    fn run_calls(&self) {
        let _ = self.call_event.read();
        loop {
            let Some(call) = self.lock_calls().queue.pop_front() else {
                return;
            };
            call();
        }
    }

    /// Waits up to `timeout_ms` (-1: forever) and runs the handlers of the ready fds.
    /// Returns `false` once a stop was requested.
    pub fn run_once(&self, timeout_ms: i32) -> Result<bool, EventLoopError> {
        let mut events = [EpollEvent::default(); 32];
        let ready = loop {
            match self.epoll.wait(timeout_ms, &mut events) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(EventLoopError::Wait(e)),
            }
        };
        let mut keep_running = true;
        for event in &events[..ready] {
            let fd = event.fd();
            if fd == self.stop_event.as_raw_fd() {
                let _ = self.stop_event.read();
                keep_running = false;
                continue;
            }
            if fd == self.call_event.as_raw_fd() {
                self.run_calls();
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

    fn lock_handlers(&self) -> std::sync::MutexGuard<'_, HashMap<RawFd, Registration>> {
        self.handlers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
}
