//! NOP round trip through `IoUring` on the real kernel.

use util::io_uring::{io_uring_sqe, IoUring};

#[test]
fn nop_round_trip() {
    let mut ring = IoUring::new(8, 0).expect("io_uring setup");
    // SAFETY: a NOP references no memory.
    unsafe { ring.push(&io_uring_sqe::nop(0xdead_beef)) }.expect("SQ has room");
    assert_eq!(ring.submit_and_wait(1).expect("submit"), 1);
    let cqe = ring.pop_completion().expect("one completion");
    assert_eq!((cqe.user_data, cqe.res), (0xdead_beef, 0));
    assert!(ring.pop_completion().is_none());
}
