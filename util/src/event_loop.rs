//! An epoll event loop whose file descriptors each carry a name and a handler.
//!
//! ```text
//!   thread A: loop.add("blk0-queue0", notify_fd, handler) ──┐
//!                                                           ▼
//!   loop thread: epoll_wait ──► look up fd ──► call handler(events) ──► repeat
//!                     ▲
//!   any thread: loop.stop() writes the loop's own "stop" eventfd
//! ```
//!
//! Invariants:
//! - Handlers run on the thread that calls [`EventLoop::run`], one at a time.
//! - The handler table is not locked while a handler runs, so a handler may add or remove
//!   handlers (its own included) without deadlocking.
//! - Removing a handler from another thread while it runs is safe: the running call finishes,
//!   later events for that fd are ignored.

use std::collections::HashMap;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

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
}

struct Registration {
    name: String,
    handler: Arc<Mutex<Handler>>,
}

/// An epoll loop of named handlers, shareable between threads (`Arc<EventLoop>`).
pub struct EventLoop {
    epoll: Epoll,
    stop_event: EventFd,
    handlers: Mutex<HashMap<RawFd, Registration>>,
}

impl EventLoop {
    /// Creates an empty loop.
    pub fn new() -> Result<Arc<Self>, EventLoopError> {
        let epoll = Epoll::new().map_err(EventLoopError::Create)?;
        let stop_event = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::Create)?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop_event.as_raw_fd(),
                EpollEvent::new(EventSet::IN, stop_event.as_raw_fd() as u64),
            )
            .map_err(|source| EventLoopError::Control {
                name: "stop".into(),
                fd: stop_event.as_raw_fd(),
                source,
            })?;
        Ok(Arc::new(EventLoop {
            epoll,
            stop_event,
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

    /// Runs handlers until [`EventLoop::stop`] is called.
    pub fn run(&self) -> Result<(), EventLoopError> {
        while self.run_once(-1)? {}
        Ok(())
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
}
