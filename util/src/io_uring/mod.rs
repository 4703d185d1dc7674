//! Our own io_uring, from the kernel ABI up.
//!
//! - [`sys`]: the kernel ABI (`linux/io_uring.h`): `#[repr(C)]` structs, opcodes, constants.
//! - [`syscall`]: `io_uring_setup`, `io_uring_enter`, `io_uring_register`, each through its
//!   own syscall number, errors carrying the errno.
//! - [`IoUring`] (`ring.rs`): a ring owning its fd and mappings, with acquire/release
//!   ordering on the shared heads and tails, a full SQ reported as [`SqFull`], and
//!   completion reaping that never loses an overflowed CQE.
//! - `sqe.rs`: typed [`io_uring_sqe`] constructors, the only place SQE fields are written.
//!
//! A request's buffers are the caller's: they must stay valid from [`IoUring::push`] until
//! its completion is reaped, which is why `push` is `unsafe`.

mod ring;
mod sqe;
pub mod sys;
pub mod syscall;

pub use ring::{Completions, IoUring, Probe, SqFull, UringError};
pub use sys::{io_uring_cqe, io_uring_params, io_uring_sqe, IoringOp};
pub use syscall::{io_uring_enter, io_uring_register, io_uring_setup};
