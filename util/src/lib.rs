//! Shared plumbing for the StratoVirt micro VM.
//!
//! - [`event_loop`]: an epoll loop whose file descriptors each carry a name and a handler.
//! - [`file`]: host files given by path (opened without blocking, checked by kind) and OFD
//!   locks on them.
//! - [`logger`]: the `log` backend behind `-D`.
//! - [`io_uring`]: our own io_uring, from the kernel ABI up.
//! - [`aio`]: the block engines (`aio=off|threads|native|io_uring`) behind one
//!   [`aio::AioContext`] trait.
//! - [`timer`]: non-blocking timers for event loops.
//! - `testing` (feature `test-utils`): host fixtures for tests (loop devices, I/O throttles,
//!   log capture).

#![deny(missing_docs)]

pub mod aio;
pub mod event_loop;
pub mod file;
pub mod io_uring;
pub mod logger;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod timer;
